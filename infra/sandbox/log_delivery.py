"""Deliver NLB access-log entries to S3 as AWS does: gzip objects per 5-minute window."""

# What AWS does and this reproduces (NLB guide, load-balancer-access-logs and
# enable-access-logs):
# - entries are batched per load balancer and 5-minute window (the window of the entry's
#   time, the end of its connection) and written as one gzip object under the AWS key;
#   a window may get several objects, as AWS delivers "multiple logs for the same period";
# - the writer is the log-delivery service, so a put happens only when the bucket policy
#   grants `delivery.logs.amazonaws.com` PutObject on that key; otherwise nothing is
#   written, the entries are lost (logs are best effort) and "Access Denied for bucket" is
#   what AWS reports;
# - objects are put with the `bucket-owner-full-control` canned ACL, which the documented
#   policy requires through its `s3:x-amz-acl` condition.
# Decision: objects get `ContentType: application/x-gzip` and no `ContentEncoding`. AWS does
# not document either; users report that ELB log objects carry no Content-Encoding, so
# readers must gunzip them themselves, and setting `gzip` would let some SDKs decompress
# transparently and hide a reader that forgets to.

from __future__ import annotations

import logging
import math
import secrets
import string
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from infra.access_logs import (
    AccessLogEntry,
    InvalidEntryError,
    load_balancer_resource,
    log_object_body,
    object_key,
    window_end,
)
from infra.aws import error_code
from infra.bucket_policy import DELIVERY_PRINCIPAL, allows_delivery

__all__ = ["CONTENT_TYPE", "DELIVERY_ACL", "LogDelivery", "random_part"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-gzip"
DELIVERY_ACL = "bucket-owner-full-control"
_RANDOM_ALPHABET = string.ascii_lowercase + string.digits
_RANDOM_LENGTH = 8  # the length seen in real NLB keys
# S3 answers that mean the delivery service may not write: the entries are dropped.
_DENIED_CODES = frozenset({"AccessDenied", "NoSuchBucket", "AllAccessDisabled"})
_STOP_ATTEMPTS = 3
_ANY_WINDOW_END = datetime(2000, 1, 1, tzinfo=timezone.utc)


def random_part() -> str:
    """The RANDOM part of a log key: 8 lowercase letters and digits from `secrets`."""
    return "".join(secrets.choice(_RANDOM_ALPHABET) for _ in range(_RANDOM_LENGTH))


@dataclass(frozen=True)
class _Batch:
    """Where a group of entries goes: one load balancer, bucket, prefix and window."""

    load_balancer_arn: str
    bucket: str
    prefix: str
    end_time: datetime


class LogDelivery:
    """Collects access-log entries and writes them to S3 every `interval` seconds.

    `record()` is thread-safe and cheap; `flush()` writes everything pending and returns the
    keys written; `start()` runs flushes in a background thread on the `interval` schedule
    (aligned to multiples of it, so the default 300 s flushes at the window ends like AWS),
    and `stop()` ends the thread and flushes what is left. `clock` (seconds since the epoch)
    drives the schedule only; entry times come from the entries.
    """

    def __init__(
        self,
        s3_client,
        account_id: str,
        region: str,
        interval: float = 300.0,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval {interval!r}: expected a positive number of seconds")
        # A key for a dummy load balancer: refuses a bad account id or region now.
        object_key("", account_id, region, "check", "0", _ANY_WINDOW_END, "check")
        self._s3 = s3_client
        self._account_id = account_id
        self._region = region
        self._interval = float(interval)
        self._clock = clock
        self._lock = threading.Lock()  # guards _pending
        self._flush_lock = threading.Lock()  # one flush at a time
        self._pending: dict[_Batch, list[AccessLogEntry]] = defaultdict(list)
        # (load balancer ARN, bucket, prefix) found good -> the load balancer's `elb` field.
        # Two threads racing on a new destination only check it twice.
        self._checked: dict[tuple, str] = {}
        self._next_flush = self._following_slot(clock())
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, load_balancer_arn: str, entry: AccessLogEntry, bucket: str,
               prefix: str | None) -> None:
        """Queue ENTRY for the load balancer's log bucket and prefix.

        Raises ValueError for an empty bucket name, ArnError for an ARN that is not a load
        balancer's, InvalidEntryError when the entry's `elb` field is not that load
        balancer's `net/NAME/ID`, LogObjectKeyError for a prefix AWS would refuse (one
        containing AWSLogs, or with a leading or trailing /).
        """
        batch = _Batch(load_balancer_arn, bucket, prefix or "", window_end(entry.time))
        destination = (load_balancer_arn, bucket, prefix)
        expected_elb = self._checked.get(destination)
        if expected_elb is None:  # checked once per destination, not per entry
            if not isinstance(bucket, str) or not bucket:
                raise ValueError(f"bucket {bucket!r}: expected the name of the log bucket")
            expected_elb = load_balancer_resource(load_balancer_arn).elb
            self._key(batch, "check")  # refuses a bad prefix now, not at flush time
            self._checked[destination] = expected_elb
        if entry.elb != expected_elb:
            raise InvalidEntryError(
                f"entry elb {entry.elb!r} does not name load balancer {load_balancer_arn}; "
                f"expected {expected_elb!r}"
            )
        with self._lock:
            self._pending[batch].append(entry)

    def pending(self) -> int:
        """How many recorded entries are not yet in S3."""
        with self._lock:
            return sum(len(entries) for entries in self._pending.values())

    def flush(self) -> list[str]:
        """Write every pending entry now; return the keys of the objects written.

        Entries for a bucket whose policy does not grant delivery are dropped with one
        warning per bucket; entries whose put failed for another reason stay pending.
        """
        with self._flush_lock:
            with self._lock:
                batches, self._pending = self._pending, defaultdict(list)
            policies: dict[str, str | None] = {}
            denied: dict[str, int] = defaultdict(int)
            written = []
            for batch, entries in sorted(batches.items(), key=_batch_order):
                try:
                    key = self._deliver(batch, entries, policies, denied)
                except Exception:  # a bug must not lose entries: keep them, say why
                    logger.exception("access-log delivery to %s failed", batch.bucket)
                    self._requeue(batch, entries)
                    continue
                if key is not None:
                    written.append(key)
            if written:
                logger.info("access logs: wrote %d objects", len(written))
            for bucket, count in denied.items():
                logger.warning(
                    "Access Denied for bucket: %s. Please check S3bucket permission: the bucket"
                    " policy does not let %s put access logs under %s; %d entries dropped",
                    bucket, DELIVERY_PRINCIPAL, self._account_prefix(batches, bucket), count,
                )
            return written

    def start(self) -> None:
        """Flush in a background thread every `interval` seconds until `stop()`."""
        if self._thread is not None:
            raise RuntimeError("log delivery already started")
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name="access-log-delivery", daemon=True
        )
        self._thread.start()

    def stop(self) -> list[str]:
        """Stop the background thread and flush everything pending; return the keys written.

        Call it after the last `record()`: entries recorded later wait for an explicit
        `flush()`. A put that keeps failing for a transient reason is retried a few times;
        entries still undelivered after that are reported in an error log line (and by
        `pending()`).
        """
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        written = self.flush()
        for attempt in range(1, _STOP_ATTEMPTS):
            if not self.pending():
                break
            time.sleep(0.2 * attempt)
            written += self.flush()
        if self.pending():
            logger.error("%d access-log entries could not be delivered", self.pending())
        return written

    def tick(self) -> list[str]:
        """Flush if the schedule says a flush is due (by `clock`); the thread calls this."""
        now = self._clock()
        if now < self._next_flush:
            return []
        self._next_flush = self._following_slot(now)
        return self.flush()

    def _run(self) -> None:
        poll = min(max(self._interval / 4, 0.05), 1.0)
        while not self._stopping.wait(poll):
            try:
                self.tick()
            except Exception:  # the thread must outlive any one bad flush
                logger.exception("access-log flush failed; will retry at the next interval")

    def _following_slot(self, now: float) -> float:
        return (math.floor(now / self._interval) + 1) * self._interval

    def _deliver(self, batch, entries, policies, denied) -> str | None:
        """Write one batch; return its key, or None when it was dropped or kept."""
        key = self._key(batch, random_part())
        if batch.bucket not in policies:
            policies[batch.bucket] = self._bucket_policy(batch.bucket)
        policy = policies[batch.bucket]
        if policy is _UNREADABLE:
            self._keep(batch, entries, key, "the bucket policy could not be read")
            return None
        if not allows_delivery(policy, batch.bucket, key, self._account_id, self._region):
            denied[batch.bucket] += len(entries)
            return None
        try:
            self._put(batch.bucket, key, entries)
        except _Denied:
            denied[batch.bucket] += len(entries)
            return None
        except _Transient as error:
            self._keep(batch, entries, key, str(error))
            return None
        logger.debug("wrote %d access-log entries to s3://%s/%s", len(entries), batch.bucket, key)
        return key

    def _keep(self, batch: _Batch, entries: list[AccessLogEntry], key: str, why: str) -> None:
        logger.warning(
            "could not write %s to bucket %s (%s); %d entries kept for the next flush",
            key, batch.bucket, why, len(entries),
        )
        self._requeue(batch, entries)

    def _requeue(self, batch: _Batch, entries: list[AccessLogEntry]) -> None:
        with self._lock:
            self._pending[batch][:0] = entries

    def _put(self, bucket: str, key: str, entries: list[AccessLogEntry]) -> None:
        body = log_object_body(sorted(entries, key=lambda entry: entry.time))
        try:
            self._s3.put_object(
                Bucket=bucket, Key=key, Body=body, ContentType=CONTENT_TYPE, ACL=DELIVERY_ACL
            )
        except ClientError as error:
            if error_code(error) in _DENIED_CODES:
                raise _Denied() from error
            raise _Transient(error_code(error) or str(error)) from error
        except BotoCoreError as error:
            raise _Transient(str(error)) from error

    def _bucket_policy(self, bucket: str):
        """The bucket's policy text, None when it has none (or no bucket), _UNREADABLE when
        S3 could not be asked."""
        try:
            return self._s3.get_bucket_policy(Bucket=bucket)["Policy"]
        except ClientError as error:
            # No policy, no bucket, or a policy we may not read: nothing shows a grant.
            if error_code(error) in {"NoSuchBucketPolicy", "NoSuchBucket", "AccessDenied"}:
                return None
            logger.debug("get_bucket_policy(%s) failed: %s", bucket, error)
            return _UNREADABLE
        except ParamValidationError:
            return None  # not a bucket name S3 could have: no grant either
        except BotoCoreError as error:
            logger.debug("get_bucket_policy(%s) failed: %s", bucket, error)
            return _UNREADABLE

    def _key(self, batch: _Batch, random: str) -> str:
        resource = load_balancer_resource(batch.load_balancer_arn)
        return object_key(
            batch.prefix, self._account_id, self._region, resource.name, resource.lb_id,
            batch.end_time, random,
        )

    def _account_prefix(self, batches, bucket: str) -> str:
        prefixes = sorted({batch.prefix for batch in batches if batch.bucket == bucket})
        return ", ".join(
            f"{prefix + '/' if prefix else ''}AWSLogs/{self._account_id}/" for prefix in prefixes
        )


class _Denied(Exception):
    """S3 refused the put for lack of permission: AWS would drop the entries."""


class _Transient(Exception):
    """The put failed for a reason that may pass: keep the entries."""


_UNREADABLE = object()  # get_bucket_policy failed for a reason other than "no policy"


def _batch_order(item) -> tuple:
    batch = item[0]
    return (batch.end_time, batch.load_balancer_arn, batch.bucket, batch.prefix)


