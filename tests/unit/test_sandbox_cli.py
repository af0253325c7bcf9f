"""`python -m infra sandbox` as a new user runs it: the printed commands work, Ctrl-C ends it."""

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
START_LIMIT_S = 15.0  # the target is 10 s; the bound leaves room for a machine under load


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def sandbox_process(tmp_path_factory):
    """The sandbox started from the repository root with a 1 s log interval; yields
    (process, state file, state, output file, seconds until ready)."""
    directory = tmp_path_factory.mktemp("sandbox-cli")
    state_file, output = directory / "s.json", directory / "output.txt"
    started = time.monotonic()
    with open(output, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "infra", "sandbox", "--state-file", str(state_file),
             "--log-interval", "1"],
            cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        state = _wait_ready(process, state_file, output)
        ready_after = time.monotonic() - started
        _wait_summary(output)
        yield process, state_file, state, output, ready_after
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(process, state_file: Path, output: Path) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"sandbox exited with {process.returncode}:\n{output.read_text()}")
        try:
            state = json.loads(state_file.read_text())
        except (FileNotFoundError, ValueError):
            state = {}
        if state.get("status") == "ready":
            return state
        time.sleep(0.05)
    pytest.fail(f"sandbox not ready after 60 s:\n{output.read_text()}")


def _wait_summary(output: Path) -> None:
    deadline = time.monotonic() + 10
    while "Ctrl-C" not in output.read_text():
        if time.monotonic() > deadline:
            pytest.fail(f"no summary printed:\n{output.read_text()}")
        time.sleep(0.05)


def _printed(output: Path, start: str) -> list[list[str]]:
    """The summary's commands starting with `start`, split as a shell would."""
    return [shlex.split(line.strip()) for line in output.read_text().splitlines()
            if line.strip().startswith(start)]


def _run(command: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=20,
                          cwd=ROOT)


def test_state_file_says_local_with_endpoint_and_loopback_addresses(sandbox_process):
    _, _, state, _, ready_after = sandbox_process
    assert ready_after < START_LIMIT_S, f"sandbox took {ready_after:.1f} s to be ready"
    assert state["target"] == "local" and state["endpoint_url"].startswith("http://127.0.0.1:")
    for listener in state["listeners"]:
        address = listener["address"]
        assert address["host"] == "127.0.0.1" and _listening(address["host"], address["port"]), (
            f"listener {listener['port']}: nothing at {address}")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_printed_openssl_command_shows_tls12_chain_and_verification(sandbox_process):
    *_, output, _ = sandbox_process
    command = _printed(output, "openssl s_client")[0]  # the 443 listener comes first
    answer = _run(command).stdout
    for expected in ("Protocol  : TLSv1.2", "Cipher    : ECDHE-RSA-AES128-GCM-SHA256",
                     "Verify return code: 0 (ok)", "CN = nlb-tls-suite.test",
                     "intermediate CA"):
        assert expected in answer, f"expected {expected!r} in openssl's output:\n{answer}"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command")
def test_printed_curl_commands_reach_both_servers_and_echo_a_post(sandbox_process):
    *_, output, _ = sandbox_process
    tcp_path, tls_path = _printed(output, "curl ")
    assert "<title>HTTP server</title>" in _run(tcp_path + ["-sS"]).stdout
    assert "<title>HTTPS server for TLS</title>" in _run(tls_path + ["-sS"]).stdout
    assert "<pre>hello world</pre>" in _run(tcp_path + ["-sS", "-d", "hello world"]).stdout
    assert "<pre>hello tls</pre>" in _run(tls_path + ["-sS", "-d", "hello tls"]).stdout


def test_printed_listing_shows_log_objects_within_the_interval(sandbox_process):
    *_, state, output, _ = sandbox_process
    (listing,) = _printed(output, "python -c")
    listing[0] = sys.executable
    prefix = f"{state['access_logs']['prefix']}/AWSLogs/{state['account_id']}/"
    deadline = time.monotonic() + 5  # the 1 s interval plus a few seconds
    while True:
        keys = _run(listing).stdout.split()
        if keys or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert keys and all(key.startswith(prefix) for key in keys), f"got {keys}"


def test_sigint_flushes_tears_down_and_exits_zero(sandbox_process):
    process, state_file, state, output, _ = sandbox_process
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0, f"exit status {process.returncode}:\n{output.read_text()}"
    assert not state_file.exists(), "expected the state file removed"
    addresses = [(item["address"]["host"], item["address"]["port"]) for item in state["listeners"]]
    addresses += [(b["host"], b["port"]) for b in state["backends"]]
    still = [address for address in addresses if _listening(*address)]
    assert not still, f"still accepting connections after stop: {still}"
    assert "Traceback" not in output.read_text(), output.read_text()
    assert not os.path.exists(str(state_file) + ".d"), "expected the run directory removed"
