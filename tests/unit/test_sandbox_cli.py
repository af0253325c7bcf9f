"""`python -m infra sandbox` as a new user runs it: the printed commands work, Ctrl-C ends it."""

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
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


@contextlib.contextmanager
def _running_sandbox(directory: Path, *options: str):
    """`python -m infra sandbox` with `options`, started from the repository root; yields
    (process, state file, state, output file, seconds until ready) and stops it after."""
    state_file, output = directory / "s.json", directory / "output.txt"
    started = time.monotonic()
    with open(output, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "infra", "sandbox", "--state-file", str(state_file),
             *options],
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


@pytest.fixture(scope="module")
def sandbox_process(tmp_path_factory):
    """The sandbox with a 1 s log interval; yields (process, state file, state, output file,
    seconds until ready)."""
    with _running_sandbox(tmp_path_factory.mktemp("sandbox-cli"), "--log-interval", "1") as run:
        yield run


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


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


def _summary_for(host: str) -> list[list[str]]:
    """The openssl and curl commands summary() prints for one listener served on `host`."""
    from infra.sandbox.cli import summary

    state = {
        "name": "stack", "region": "eu-west-1", "account_id": "123456789012",
        "certificate": {"domain": "nlb.test", "ca_bundle": "/tmp/ca.pem"},
        "listeners": [{"port": 443, "protocol": "TLS", "ssl_policy": "ELBSecurityPolicy-2016-08",
                       "address": {"host": host, "port": 40001},
                       "target_group": {"protocol": "TCP", "port": 8080}}],
    }
    text = summary(state, "http://127.0.0.1:5000", 1.0, Path("s.json"))
    return [shlex.split(line) for line in text.splitlines()
            if line.strip().startswith(("openssl ", "curl "))]


@pytest.mark.parametrize("host, connect", [("127.0.0.1", "127.0.0.1:40001"),
                                           ("::1", "[::1]:40001")])
def test_printed_commands_bracket_an_ipv6_address(host, connect):
    openssl, curl = _summary_for(host)
    expected_openssl = ["openssl", "s_client", "-connect", connect, "-servername", "nlb.test",
                        "-CAfile", "/tmp/ca.pem"]
    expected_curl = ["curl", "--cacert", "/tmp/ca.pem", "--connect-to",
                     f"nlb.test:443:{connect}", "https://nlb.test/"]
    assert (openssl, curl) == (expected_openssl, expected_curl), (
        f"listener on {host}: expected {expected_openssl} and {expected_curl}, "
        f"got {openssl} and {curl}")


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
    # The interpreter the sandbox ran with, whose packages (boto3) the command needs.
    (listing,) = _printed(output, f"{sys.executable} -c")
    prefix = f"{state['access_logs']['prefix']}/AWSLogs/{state['account_id']}/"
    (first,) = [item for item in state["listeners"] if item["port"] == 443]
    with socket.create_connection((first["address"]["host"], first["address"]["port"])):
        pass  # one connection, so there is something to log whatever ran before
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


# ---- a second sandbox: IPv6 loopback, round robin, ended by SIGTERM -------------------------

@pytest.fixture(scope="module")
def ipv6_round_robin_process(tmp_path_factory, sandbox_process):
    """The sandbox on ::1 with round-robin target selection, started once the first one has
    stopped (two at once would only compete for the machine's two cores)."""
    if not _has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1) to serve on")
    first = sandbox_process[0]
    if first.poll() is None:
        first.send_signal(signal.SIGINT)
        first.wait(30)
    with _running_sandbox(tmp_path_factory.mktemp("sandbox-ipv6"), "--listen-address", "::1",
                          "--target-selection", "round_robin") as run:
        yield run


def _served_by(state: dict, port: int) -> int:
    """Which target answered one GET through listener `port`: its listen port."""
    listener = next(item for item in state["listeners"] if item["port"] == port)
    address = (listener["address"]["host"], listener["address"]["port"])
    name = state["certificate"]["domain"]
    context = ssl.create_default_context(cafile=state["certificate"]["ca_bundle"])
    request = (f"GET / HTTP/1.1\r\nHost: {name}\r\nAccept: application/json\r\n"
               "Connection: close\r\n\r\n").encode()
    with socket.create_connection(address, timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(request)
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    return json.loads(answer.partition(b"\r\n\r\n")[2])["listen_port"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command")
def test_listen_address_ipv6_serves_the_listeners_on_ipv6_loopback(ipv6_round_robin_process):
    *_, state, output, _ = ipv6_round_robin_process
    hosts = {item["address"]["host"] for item in state["listeners"]}
    assert hosts == {"::1"}, f"expected every listener on ::1, got {hosts}"
    tcp_path, tls_path = _printed(output, "curl ")
    for command, title in ((tcp_path, "HTTP server"), (tls_path, "HTTPS server for TLS")):
        answer = _run(command + ["-sS"])
        assert f"<title>{title}</title>" in answer.stdout, (
            f"expected the {title} page through {shlex.join(command)}, got "
            f"{answer.stdout[:200]!r} {answer.stderr!r}")


def test_round_robin_sends_consecutive_connections_to_each_target_in_turn(
        ipv6_round_robin_process):
    *_, state, _, _ = ipv6_round_robin_process
    seen = [_served_by(state, 443) for _ in range(10)]
    assert len(set(seen)) == 2 and all(a != b for a, b in zip(seen, seen[1:])), (
        f"round robin over two targets: expected alternating ports, got {seen}")


def test_sigterm_flushes_tears_down_and_exits_zero_like_sigint(ipv6_round_robin_process):
    process, state_file, state, output, _ = ipv6_round_robin_process
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, f"exit status {process.returncode}:\n{output.read_text()}"
    assert not state_file.exists(), "expected the state file removed"
    assert "sandbox stopped; stack torn down" in output.read_text(), output.read_text()
    addresses = [(item["address"]["host"], item["address"]["port"]) for item in state["listeners"]]
    still = [address for address in addresses if _listening(*address)]
    assert not still, f"still accepting connections after SIGTERM: {still}"


def test_a_state_file_of_another_run_is_refused_and_left_as_it_was(tmp_path):
    from infra.stack import Stack
    from infra.state import new_state, run_directory, write_state

    state_file = tmp_path / "other.json"
    other = new_state(Stack(), "123456789012", None)
    other["resources"].append({"type": "ec2-vpc", "id": "vpc-0123456789abcdef0"})
    write_state(state_file, other)
    kept = run_directory(state_file)
    kept.mkdir(mode=0o700)
    (kept / "keep-me").write_text("another run's")
    before = state_file.read_bytes()

    done = subprocess.run(
        [sys.executable, "-m", "infra", "sandbox", "--state-file", str(state_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    assert done.returncode == 2, f"expected exit 2, got {done.returncode}: {done.stderr}"
    assert f"state file {state_file} already lists 1 resources of run {other['run_id']}" in (
        done.stderr), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert state_file.read_bytes() == before, "the other run's state file was changed"
    assert (kept / "keep-me").read_text() == "another run's", "its directory was touched"
    assert sorted(p.name for p in kept.iterdir()) == ["keep-me"], list(kept.iterdir())


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("10.0.0.1", False), ("::", False), ("127.example.com", False),
    ("localhost.example.com", False), ("::1.example", False),
])
def test_only_loopback_addresses_count_as_loopback(address, loopback):
    from infra.sandbox.cli import is_loopback

    assert is_loopback(address) is loopback, f"{address}: expected loopback={loopback}"
