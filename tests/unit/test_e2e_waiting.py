"""wait_for reports progress at least every 15 s whatever its interval, refuses a deadline it
could never reach, and times out with infra.waits' WaitTimeout."""

import math

import pytest

from fixtures.waiting import PROGRESS_EVERY, WaitTimeout, wait_for
from infra import waits

pytestmark = pytest.mark.unit


class FakeTime:
    """A clock that moves only when slept on, recording each sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"expected a sleep of >= 0 s, got {seconds}"
        self.sleeps.append(seconds)
        self.now += seconds


def _wait(fake: FakeTime, *, timeout: float, interval: float, done_at=None):
    reports: list[float] = []
    polls: list[float] = []

    def poll():
        polls.append(fake.now - 1000.0)
        return True if done_at is not None and fake.now - 1000.0 >= done_at else None

    def report(message: str) -> None:
        reports.append(fake.now - 1000.0)

    try:
        wait_for("the thing", poll, timeout=timeout, interval=interval, report=report,
                 clock=fake.clock, sleep=fake.sleep)
    except WaitTimeout:
        pass
    return polls, reports


def test_a_30_second_interval_still_reports_every_15_seconds():
    fake = FakeTime()
    polls, reports = _wait(fake, timeout=95.0, interval=30.0)
    assert polls == [0.0, 30.0, 60.0, 90.0, 95.0], (
        f"expected polls every 30 s up to the 95 s deadline, got polls at {polls}"
    )
    assert reports == [15.0, 30.0, 45.0, 60.0, 75.0, 90.0], (
        f"expected a progress report every {PROGRESS_EVERY:.0f} s, got reports at {reports}"
    )
    gaps = [b - a for a, b in zip([0.0] + reports, reports + [95.0])]
    assert max(gaps) <= PROGRESS_EVERY, (
        f"expected no stretch longer than {PROGRESS_EVERY} s without a report, got gaps {gaps}"
    )


def test_a_short_interval_polls_often_and_reports_every_15_seconds():
    fake = FakeTime()
    polls, reports = _wait(fake, timeout=40.0, interval=4.0, done_at=34.0)
    assert polls[-1] == 36.0 and len(polls) == 10, (
        f"expected polls every 4 s until the condition held (at 36 s), got {polls}"
    )
    assert reports == [15.0, 30.0], (
        f"expected a report at each 15 s mark between polls, got {reports}"
    )


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -1.0])
def test_a_timeout_that_is_not_a_finite_number_of_seconds_is_refused(timeout):
    fake = FakeTime()
    with pytest.raises(ValueError) as caught:
        wait_for("the thing", lambda: None, timeout=timeout, interval=1.0,
                 clock=fake.clock, sleep=fake.sleep)
    message = str(caught.value)
    assert f"timeout={timeout!r}" in message and "finite number of seconds >= 0" in message, (
        f"expected the error to name timeout={timeout!r} and what is accepted, got {message!r}"
    )
    assert fake.sleeps == [], f"expected no sleep before the refusal, got {fake.sleeps}"


def test_a_nan_interval_is_refused():
    with pytest.raises(ValueError, match="interval=nan"):
        wait_for("the thing", lambda: None, timeout=1.0, interval=math.nan)


def test_a_timeout_names_what_was_awaited_and_is_infras_wait_timeout():
    fake = FakeTime()
    with pytest.raises(waits.WaitTimeout) as caught:
        wait_for("the thing", lambda: None, timeout=30.0, interval=10.0,
                 report=lambda message: None, clock=fake.clock, sleep=fake.sleep)
    expected = "gave up waiting for the thing after 30 s (deadline 30 s)"
    assert (str(caught.value), caught.type is WaitTimeout) == (expected, True), (
        f"expected infra.waits.WaitTimeout({expected!r}), got {caught.type.__module__}."
        f"{caught.type.__name__}({str(caught.value)!r})"
    )


def test_progress_lines_say_what_is_awaited_the_time_so_far_and_the_deadline():
    fake = FakeTime()
    lines: list[str] = []
    with pytest.raises(WaitTimeout):
        wait_for("the thing", lambda: None, timeout=20.0, interval=10.0,
                 report=lines.append, clock=fake.clock, sleep=fake.sleep)
    assert lines == ["waiting for the thing: 15 s elapsed, deadline 20 s"], (
        f"expected one progress line at 15 s, got {lines}"
    )
