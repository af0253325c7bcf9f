"""SIGINT and SIGTERM as an exception that never lands between a create call and its record.

A signal that arrives while a resource is being created and recorded in the ledger is held
until the record is written, so an interrupted build never leaves a resource the state file
does not list. Elsewhere (waits, sleeps) it is raised at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

__all__ = ["Interrupted", "deferred", "handling_signals"]

log = logging.getLogger(__name__)

_local = threading.local()


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; a BaseException so no `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


def _depth() -> int:
    return getattr(_local, "depth", 0)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a signal handled by `handling_signals` until the block ends, then raise it."""
    _local.depth = _depth() + 1
    try:
        yield
    finally:
        _local.depth -= 1
        pending = getattr(_local, "pending", None)
        if _local.depth == 0 and pending is not None:
            _local.pending = None
            raise Interrupted(pending)


def _handle(signum, frame) -> None:
    if _depth() > 0:
        log.info("%s: finishing the resource being created first", signal.Signals(signum).name)
        _local.pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def handling_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise Interrupted (held inside `deferred`).

    Must be entered in the main thread (Python runs signal handlers there only).
    """
    previous = {s: signal.signal(s, _handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
