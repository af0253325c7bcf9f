"""Access-log delivery on its schedule: interval batching, the background thread, stop."""

import logging
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest

from infra.access_logs import parse_object_key, window_end
from infra.sandbox.log_delivery import LogDelivery
from tests.unit.log_delivery_support import (
    ACCOUNT,
    BUCKET,
    LB_ARN,
    LOGGER,
    REGION,
    T0,
    FakeClock,
    FlakyS3,
    entry,
    make_bucket,
    objects,
)

pytestmark = pytest.mark.unit


# ---- the schedule ----------------------------------------------------------------------------


def test_tick_flushes_only_when_the_interval_has_passed(s3):
    make_bucket(s3)
    clock = FakeClock(1_000.0)  # interval 300: slots at 1200, 1500, ...
    delivery = LogDelivery(s3, ACCOUNT, REGION, interval=300, clock=clock)
    delivery.record(LB_ARN, entry(1), BUCKET, "logs")

    clock.now = 1_199.9
    assert delivery.tick() == [] and objects(s3) == {}, "flushed before the interval"
    clock.now = 1_200.0
    first = delivery.tick()
    assert len(first) == 1, f"expected the first batch at 1200, got {first}"

    delivery.record(LB_ARN, entry(2), BUCKET, "logs")
    clock.now = 1_499.0
    assert delivery.tick() == [], "a second flush came before the next slot"
    clock.now = 1_500.5
    second = delivery.tick()
    assert len(second) == 1 and second != first
    assert {k: [e.sent_bytes for e in v] for k, v in objects(s3).items()} == {
        first[0]: [1], second[0]: [2]
    }


def test_background_thread_delivers_within_the_interval(s3):
    make_bucket(s3)
    delivery = LogDelivery(s3, ACCOUNT, REGION, interval=0.2)
    delivery.start()
    try:
        delivery.record(LB_ARN, entry(1), BUCKET, "logs")
        deadline = time.monotonic() + 3
        while not objects(s3) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(objects(s3)) == 1, "no object within 3 s at a 0.2 s interval"
    finally:
        delivery.stop()


def test_stop_flushes_everything_pending(s3):
    make_bucket(s3)
    delivery = LogDelivery(s3, ACCOUNT, REGION, interval=300)
    delivery.start()
    for n in range(5):
        delivery.record(LB_ARN, entry(n, T0 + timedelta(minutes=n * 2)), BUCKET, "logs")
    keys = delivery.stop()
    stored = objects(s3)
    assert sorted(keys) == sorted(stored) and len(keys) == 2, f"got {keys}"
    assert sorted(e.sent_bytes for v in stored.values() for e in v) == list(range(5))
    assert delivery.pending() == 0


def test_nothing_is_lost_with_concurrent_records_and_flushes(s3):
    make_bucket(s3)
    delivery = LogDelivery(s3, ACCOUNT, REGION, interval=0.05)
    delivery.start()
    threads_count, per_thread = 6, 60
    done = threading.Event()

    def recorder(base):
        for i in range(per_thread):
            n = base * per_thread + i
            delivery.record(LB_ARN, entry(n, T0 + timedelta(seconds=n * 1.7)), BUCKET, "logs")

    def flusher():
        while not done.is_set():
            delivery.flush()

    recorders = [threading.Thread(target=recorder, args=(b,)) for b in range(threads_count)]
    extra_flusher = threading.Thread(target=flusher)
    extra_flusher.start()
    for thread in recorders:
        thread.start()
    for thread in recorders:
        thread.join()
    done.set()
    extra_flusher.join()
    delivery.stop()

    stored = objects(s3)
    counts = Counter(e.sent_bytes for v in stored.values() for e in v)
    total = threads_count * per_thread
    missing = [n for n in range(total) if counts[n] == 0]
    doubled = [n for n, c in counts.items() if c > 1]
    assert not missing and not doubled and sum(counts.values()) == total, (
        f"expected each of {total} entries once: missing {missing[:10]}, doubled {doubled[:10]}"
    )
    for key, entries in stored.items():
        assert entries == sorted(entries, key=lambda e: e.time), f"{key} is not sorted by time"
        assert all(window_end(e.time) == parse_object_key(key).end_time for e in entries)



def test_unexpected_error_keeps_entries_and_the_thread_alive(s3, caplog):
    make_bucket(s3)
    flaky = FlakyS3(s3, RuntimeError("unexpected"), failures=2)
    delivery = LogDelivery(flaky, ACCOUNT, REGION, interval=0.05)
    delivery.record(LB_ARN, entry(1), BUCKET, "logs")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        delivery.start()
        deadline = time.monotonic() + 3
        while not objects(s3) and time.monotonic() < deadline:
            time.sleep(0.05)
        delivery.stop()
    assert flaky.failures == 0 and "RuntimeError: unexpected" in caplog.text
    assert [e.sent_bytes for v in objects(s3).values() for e in v] == [1]


def test_interval_must_be_positive(s3):
    with pytest.raises(ValueError, match="interval 0"):
        LogDelivery(s3, ACCOUNT, REGION, interval=0)
