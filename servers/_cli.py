"""The command line both backends share: options, logging, stopping on a signal."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import threading
from typing import Iterator, Optional

from ._http import ADDRESS_ACCEPTED, BackendServer, access_log, host_port
from ._request import Limits

__all__ = [
    "StartupInterrupted",
    "StopRequest",
    "add_server_arguments",
    "chosen_port",
    "configure_logging",
    "fail",
    "limits_from",
    "listening_line",
    "serve_until_stopped",
    "stopped_while_starting",
]

_log = logging.getLogger(__name__)
_LIFECYCLE_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
# How often --parent-pid is checked; a stop within a second of the parent ending is
# soon enough for a sandbox, and the check costs one system call.
_PARENT_POLL_SECONDS = 1.0
_MAX_PID = 2**31 - 1  # pid_t is a signed 32-bit integer


class StartupInterrupted(Exception):
    """A stop signal arrived while the server was starting (see StopRequest.starting)."""


class StopRequest:
    """Set by SIGTERM or SIGINT, or when the --parent-pid process ends; the main thread
    waits on it while the server serves. reason says why, for the log ("on SIGTERM").

    install() comes first in a main(), so a signal during start-up still ends cleanly.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: Optional[str] = None
        self._starting = False

    def install(self) -> "StopRequest":
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._received)
        return self

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """A start-up step a signal interrupts: the handler raises StartupInterrupted.

        Setting the event alone would wait for the step to finish, and making a
        certificate can take long (openssl req is given a minute). The exception unwinds
        through the step's finally blocks: a temporary key directory is still removed,
        and subprocess.run kills the openssl it started.
        """
        if self.event.is_set():
            raise StartupInterrupted(self.reason)
        self._starting = True
        try:
            yield
        finally:
            self._starting = False

    def watch_parent(self, pid: Optional[int]) -> None:
        """Stop when process pid ends: a daemon thread checks every second."""
        if pid is None:
            return
        # Our own parent is watched through getppid(): when it ends the kernel gives us
        # a new parent, which a reused PID cannot fake. Any other process is watched by
        # signal 0, which also finds a process that ended but was not yet reaped.
        is_parent = pid == os.getppid()
        thread = threading.Thread(target=self._watch, args=(pid, is_parent),
                                  name=f"parent-{pid}-watch", daemon=True)
        thread.start()

    def _watch(self, pid: int, is_parent: bool) -> None:
        while not self.event.wait(_PARENT_POLL_SECONDS):
            if not _running(pid, is_parent):
                self.reason = f"because parent process {pid} has ended"
                self.event.set()
                return

    def _received(self, signum: int, frame) -> None:  # noqa: ANN001
        self.reason = f"on {signal.Signals(signum).name}"
        self.event.set()
        if self._starting:
            self._starting = False  # a second signal during unwinding is not raised
            raise StartupInterrupted(self.reason)


def _running(pid: int, is_parent: bool) -> bool:
    if is_parent:
        return os.getppid() == pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    return True


def serve_until_stopped(server: BackendServer, stop: StopRequest) -> int:
    """Serve until a stop signal or the parent's end, then stop the server; exit 0."""
    server.start()
    # Wake up now and then: a signal the kernel hands to one of the connection threads
    # runs its Python handler only when the main thread next executes bytecode, which a
    # wait without a timeout would never do.
    while not stop.event.wait(0.5):
        pass
    _log.info("stopping %s", stop.reason)
    server.stop()
    return 0


def stopped_while_starting(stop: StopRequest) -> int:
    """Log a stop that came during start-up; exit status 0, as for a stop later."""
    _log.info("stopping %s during start-up", stop.reason)
    return 0


def add_server_arguments(parser: argparse.ArgumentParser, default_port: int) -> None:
    """The options both servers take: address, port, limits, parent, verbosity."""
    parser.add_argument(
        "-l", "--listen", default="0.0.0.0", type=_address, metavar="ADDRESS",
        help="address to listen on (default 0.0.0.0; '::' for IPv6)",
    )
    parser.add_argument(
        "-p", "--port", type=_port, metavar="PORT",
        help=f"port to listen on (default {default_port}; 0 picks a free one)",
    )
    parser.add_argument(
        "positional_port", nargs="?", type=_port, metavar="PORT",
        help="the port, given without -p",
    )
    parser.add_argument(
        "--max-body", type=_byte_count, default=Limits.max_body, metavar="BYTES",
        help="largest request body accepted (default 16 MiB)",
    )
    parser.add_argument(
        "--idle-timeout", type=_seconds, default=Limits.idle_timeout, metavar="SECONDS",
        help="close a connection that sends nothing this long (default 30)",
    )
    parser.add_argument(
        "--parent-pid", type=_parent_pid, metavar="PID",
        help="stop (exit 0) when this process ends, checked every second; for a "
             "process that starts servers and may be killed before it can stop them",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="also log, at debug level, connections that end without a request",
    )


def chosen_port(
    parser: argparse.ArgumentParser, args: argparse.Namespace, default: int
) -> int:
    """-p PORT or the bare PORT (they must agree when both are given), else default."""
    given = [port for port in (args.port, args.positional_port) if port is not None]
    if len(set(given)) > 1:
        parser.error(f"-p {args.port} and PORT {args.positional_port} disagree")
    return given[0] if given else default


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(max_body=args.max_body, idle_timeout=args.idle_timeout)


def configure_logging(verbose: bool) -> None:
    """Lifecycle lines with time and logger name, access-log lines bare, on stderr."""
    lifecycle = logging.StreamHandler(sys.stderr)
    lifecycle.setFormatter(logging.Formatter(_LIFECYCLE_FORMAT))
    package = logging.getLogger("servers")
    package.addHandler(lifecycle)
    package.setLevel(logging.DEBUG if verbose else logging.INFO)
    bare = logging.StreamHandler(sys.stderr)
    bare.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(bare)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


def fail(prog: str, message: str) -> int:
    """Print a one-message error the way argparse does; returns exit status 2."""
    sys.stderr.write(f"{prog}: error: {message}\n")
    return 2


def listening_line(server: BackendServer) -> str:
    """The start of the first log line: the bound address and port, and the limits."""
    limits = server.limits
    return (
        f"listening on {host_port(server.listen_address, server.port)} "
        f"(max body {limits.max_body} bytes, idle timeout {limits.idle_timeout:g} s)"
    )


def _address(text: str) -> str:
    # The socket module binds "" to every interface; that must be asked for by name.
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an address: an address is required; {ADDRESS_ACCEPTED}"
        )
    return text


def _parent_pid(text: str) -> int:
    # 0 and negative numbers are not processes: os.kill would signal process groups.
    # Ten digits at most: int() of thousands is refused, and os.kill takes a C int.
    if not (text.isascii() and text.isdigit() and len(text) <= 10
            and 0 < int(text) <= _MAX_PID):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a process id; accepted: a whole number from 1 to {_MAX_PID}"
        )
    pid = int(text)
    if not _running(pid, is_parent=False):
        raise argparse.ArgumentTypeError(f"no process {pid} is running")
    return pid


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port; accepted: 0 to 65535"
        )
    return int(text)


def _byte_count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a byte count; accepted: a whole number, 0 or more"
        )
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a timeout; accepted: a number of seconds above 0"
        )
    return value
