"""Backends started with --parent-pid stop by themselves once that process has ended."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys

import pytest

from tests.unit.test_http_server import REPO_ROOT, assert_serves, start_server

pytestmark = pytest.mark.unit

# Generous: the server checks every second, and the machine may be busy.
EXIT_DEADLINE = 30


@pytest.mark.parametrize("module", ["servers.http_server", "servers.https_server"])
def test_server_exits_0_when_the_parent_pid_process_ends(module):
    parent = subprocess.Popen(["sleep", "300"])
    server = None
    try:
        server = start_server(module, "-p", "0", "--parent-pid", str(parent.pid))
        if module == "servers.http_server":
            assert_serves(server.port)
        parent.kill()
        parent.wait()  # reaped: a zombie would still answer signal 0
        status = server.wait_exit(EXIT_DEADLINE)
        assert status == 0, f"expected exit 0, got {status}:\n{server.stderr}"
        expected = f"stopping because parent process {parent.pid} has ended"
        assert expected in server.stderr, f"expected {expected!r} in:\n{server.stderr}"
        assert "Traceback" not in server.stderr, server.stderr
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if server is not None and server.process.poll() is None:
            server.stop()


# A parent that starts a backend watching it, prints the backend's PID, and waits to be
# killed, as the sandbox is when SIGKILL ends it. It waits on the backend, so a backend
# that fails to start ends it too, and the test reads the end of its output at once.
PARENT_SCRIPT = """
import os, subprocess, sys
backend = subprocess.Popen(
    [sys.executable, "-m", "servers.http_server", "-l", "127.0.0.1", "-p", "0",
     "--parent-pid", str(os.getpid())],
    stdin=subprocess.DEVNULL,
)
print(backend.pid, flush=True)
backend.wait(300)
"""


def test_server_stops_when_its_parent_is_killed_with_sigkill():
    # The backend inherits the parent's stderr pipe, and holds it last once the parent
    # is killed: reading it to the end waits for the backend to exit.
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    backend_pid = None
    try:
        assert parent.stdout is not None and parent.stderr is not None
        backend_pid = int(parent.stdout.readline())
        lines = []
        for line in parent.stderr:  # until the backend says where it listens
            lines.append(line)
            if "listening on" in line:
                break
        assert "listening on" in "".join(lines), f"the backend did not start:\n{lines}"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        try:
            rest, log = parent.communicate(timeout=EXIT_DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"backend {backend_pid} still running") from None
        log = "".join(lines) + log
        expected = f"stopping because parent process {parent.pid} has ended"
        assert expected in log, f"expected {expected!r} in:\n{log}"
        assert "Traceback" not in log, log
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if backend_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(backend_pid, signal.SIGKILL)


def test_unknown_parent_pid_exits_2_naming_it():
    finished = subprocess.Popen(["true"])
    finished.wait()  # a PID that was just in use and is free now
    command = [sys.executable, "-m", "servers.http_server", "-l", "127.0.0.1", "-p", "0",
               "--parent-pid", str(finished.pid)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, f"expected exit 2, got {result.returncode}"
    assert f"no process {finished.pid} is running" in result.stderr, result.stderr


def test_local_compute_starts_backends_watching_its_own_process(tmp_path):
    from infra.sandbox.local_compute import LocalCompute

    compute = LocalCompute()
    compute._log_directory = tmp_path  # what launch() sets from the run's directory
    try:
        key, process, log_file = compute._launch("tcp-group", "TCP", 1, port=0)
        backend = compute._registered(key, process, log_file)
    finally:
        compute.stop_all()
    argv = " ".join(backend.argv)
    assert re.search(rf"--parent-pid {os.getpid()}( |$)", argv), (
        f"expected --parent-pid {os.getpid()} in {argv}")
