"""Unit tests of the plain HTTP backend, started as `python -m servers.http_server`."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening on \[?([^\]\s]+?)\]?:(\d+) ")
DEFAULT_MAX_BODY = 16 * 1024 * 1024
IDLE_TIMEOUT = 1.0
JSON = {"Accept": "application/json"}
JSON_FIELD = ("Accept: application/json",)


class ServerProcess:
    """A backend run as `PYTHON -m MODULE ARGS` from the repository root.

    Tests talk to it over loopback and stop it by its PID, as a user or the data plane
    would; its stderr is collected line by line while it runs.
    """

    def __init__(self, module: str, *args: str, python: str = sys.executable,
                 env: Optional[Dict[str, str]] = None) -> None:
        # -W error: a warning in the server (a deprecation, an unclosed socket) lands on
        # stderr as an error, where the Traceback checks see it.
        command = [python, "-W", "error", "-m", module, *args]
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self._lines: List[str] = []
        self._finished = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        self.port = 0

    def _collect(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            with self._changed:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        with self._changed:
            return "\n".join(self._lines)

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match:
        """The first stderr line matching pattern; fails if the server exits first."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self._lines:
                    found = compiled.search(line)
                    if found:
                        return found
                remaining = deadline - time.monotonic()
                if self._finished or remaining <= 0:
                    raise AssertionError(
                        f"expected a line matching {pattern!r}; got:\n{self.stderr}"
                    )
                self._changed.wait(remaining)

    def wait_listening(self) -> int:
        self.port = int(self.wait_for(LISTENING.pattern).group(2))
        return self.port

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"still running {timeout} s later:\n{self.stderr}")
        self._reader.join(5)
        return status


def start_server(module: str, *args: str, **kwargs) -> ServerProcess:
    """A server on 127.0.0.1, once its first log line has named the port."""
    server = ServerProcess(module, "-l", "127.0.0.1", *args, **kwargs)
    try:
        server.wait_listening()
    except AssertionError:
        server.stop()
        raise
    return server


def stop_cleanly(server: ServerProcess) -> None:
    status = server.stop()
    assert status == 0, f"expected exit 0 on SIGTERM, got {status}:\n{server.stderr}"
    assert "Traceback" not in server.stderr, server.stderr


def request_bytes(start: str, *fields: str, body: bytes = b"") -> bytes:
    """`START HTTP/1.1` ("POST /path"), Host, the fields, Connection: close, body."""
    lines = [f"{start} HTTP/1.1", "Host: x", *fields, "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, then read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_to_end(sock)


def read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def parse_response(raw: bytes) -> Tuple[int, Dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of the first response in raw."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest[: int(headers.get("content-length", len(rest)))]


def status_of(port: int, data: bytes) -> int:
    return parse_response(exchange(port, data))[0]


def get(port: int, path: str = "/", headers: Optional[Dict[str, str]] = None,
        method: str = "GET", body: Optional[bytes] = None
        ) -> Tuple[int, Dict[str, str], bytes]:
    """One request with http.client: status, headers (lower-case names), body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        connection.close()


def get_json(port: int, path: str = "/", **kwargs) -> dict:
    status, headers, body = get(port, path, headers=JSON, **kwargs)
    assert status == 200, f"expected 200 for {path}, got {status}: {body[:200]!r}"
    assert headers["content-type"] == "application/json", headers
    return json.loads(body)


def assert_serves(port: int) -> None:
    """The server still answers a normal request after whatever the test did."""
    marker = f"/still-serving-{uuid.uuid4().hex}"
    document = get_json(port, marker)
    assert document["path"] == marker, f"expected path {marker}, got {document['path']}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """One HTTP backend for the module: default limits, a one-second idle timeout."""
    process = start_server("servers.http_server", "-p", "0",
                           "--idle-timeout", str(IDLE_TIMEOUT))
    yield process
    stop_cleanly(process)


def test_get_page_names_server_host_address_and_path(server):
    status, headers, body = get(server.port, "/some/path?q=1")
    page = body.decode("utf-8")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>HTTP server</title>" in page and "<h1>HTTP server</h1>" in page, page
    assert f"<dd>{socket.gethostname()}</dd>" in page, page
    assert f"<dd>127.0.0.1:{server.port}</dd>" in page, page
    assert "<dd>/some/path?q=1</dd>" in page, page
    assert int(headers["content-length"]) == len(body)


def test_post_page_carries_body_html_escaped(server):
    body = b"<script>alert('x')</script> & more"
    status, _, data = get(server.port, "/form", method="POST", body=body)
    page = data.decode("utf-8")
    assert status == 200
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page, page
    assert "<script>" not in page, f"expected the body escaped, got {page}"
    assert f"Request body ({len(body)} bytes)" in page, page


@pytest.mark.parametrize("accept", [None, "application/json"])
def test_head_sends_get_headers_and_length_without_body(server, accept):
    headers = {"Accept": accept} if accept else {}
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request("GET", "/head-check", headers=headers)
        got = connection.getresponse()
        get_body = got.read()
        connection.request("HEAD", "/head-check", headers=headers)
        head = connection.getresponse()
        head_body = head.read()
        # A body after HEAD would be read as the start of the next response.
        connection.request("GET", "/after-head", headers=headers)
        after = connection.getresponse()
        after.read()
    finally:
        connection.close()
    head_length = head.getheader("Content-Length")
    assert head.status == 200 and head_body == b""
    assert head_length == str(len(get_body)), (
        f"expected HEAD Content-Length {len(get_body)}, got {head_length}"
    )
    assert head.getheader("Content-Type") == got.getheader("Content-Type")
    assert after.status == 200, f"expected 200 after the HEAD, got {after.status}"


def test_json_document_describes_request_as_seen(server):
    body = b"hello json \x00\xff"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(request_bytes(
            "POST /doc?x=1", "Accept: application/json", "X-Test: one", "X-Test: two",
            f"Content-Length: {len(body)}", body=body,
        ))
        status, headers, data = parse_response(read_to_end(sock))
    document = json.loads(data)
    expected = {
        "server": "http", "hostname": socket.gethostname(),
        "listen_address": "127.0.0.1", "listen_port": server.port,
        "local_address": "127.0.0.1", "local_port": server.port,
        "client_address": "127.0.0.1", "client_port": client_port,
        "method": "POST", "path": "/doc?x=1", "http_version": "HTTP/1.1",
        "body_length": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
        "tls": None,
    }
    assert status == 200 and headers["content-type"] == "application/json"
    assert {key: document[key] for key in expected} == expected
    assert document["headers"]["X-Test"] == "one, two", document["headers"]
    assert document["headers"]["Host"] == "x", document["headers"]


@pytest.mark.parametrize("accept, json_expected", [
    ("application/json", True),
    ("text/html, application/json;q=0.5", False),
    ("application/json;q=0.9, text/html;q=0.1", True),
    ("application/json;q=0", False),
    ("*/*", False),
])
def test_accept_header_chooses_json_or_html(server, accept, json_expected):
    _, headers, _ = get(server.port, "/negotiate", headers={"Accept": accept})
    expected = "application/json" if json_expected else "text/html; charset=utf-8"
    assert headers["content-type"] == expected, f"Accept {accept!r}: got {headers}"


def test_keep_alive_serves_several_requests_on_one_connection(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        ports = []
        for index in range(3):
            connection.request("GET", f"/keep/{index}", headers=JSON)
            response = connection.getresponse()
            assert response.getheader("Connection") is None, response.getheaders()
            ports.append(json.loads(response.read())["client_port"])
        local_port = connection.sock.getsockname()[1]
    finally:
        connection.close()
    assert ports == [local_port] * 3, f"expected port {local_port} 3 times, got {ports}"


def test_http10_connection_closes_unless_keep_alive_is_asked(server):
    raw = exchange(server.port, b"GET /old HTTP/1.0\r\n\r\n")
    status, headers, _ = parse_response(raw)
    assert status == 200 and headers["connection"] == "close", headers
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = sock.recv(65536)
        sock.sendall(b"GET /old-again HTTP/1.0\r\n\r\n")
        second = read_to_end(sock)
    assert parse_response(first)[1]["connection"] == "keep-alive", first
    assert parse_response(second)[0] == 200, second


@pytest.mark.parametrize("length, expected", [(8192, 200), (8193, 414)])
def test_request_line_limit_is_8_kib(server, length, expected):
    prefix, suffix = "GET /", " HTTP/1.1"
    line = prefix + "a" * (length - len(prefix) - len(suffix)) + suffix
    assert len(line) == length
    tail = "\r\nHost: x\r\nConnection: close\r\n\r\n"
    status = status_of(server.port, (line + tail).encode())
    assert status == expected, f"{length} bytes: expected {expected}, got {status}"
    assert_serves(server.port)


def test_request_line_far_over_limit_gets_414(server):
    status = status_of(server.port, b"GET /" + b"x" * 100_000 + b" HTTP/1.1\r\n\r\n")
    assert status == 414, f"expected 414, got {status}"
    assert_serves(server.port)


def test_request_line_of_only_carriage_returns_over_8_kib_gets_414(server):
    status = status_of(server.port, b"\r" * 9000)
    assert status == 414, f"expected 414 for 9000 CRs without a line feed, got {status}"
    assert_serves(server.port)


@pytest.mark.parametrize("total, expected", [(65536, 200), (65537, 431)])
def test_header_section_limit_is_64_kib(server, total, expected):
    fixed = b"Host: x\r\nConnection: close\r\n"
    name = b"X-Fill: "
    headers = fixed + name + b"a" * (total - len(fixed) - len(name) - 2) + b"\r\n"
    assert len(headers) == total
    status = status_of(server.port, b"GET /headers HTTP/1.1\r\n" + headers + b"\r\n")
    assert status == expected, f"{total} bytes: expected {expected}, got {status}"
    assert_serves(server.port)


def test_many_small_headers_over_64_kib_get_431(server):
    fields = [f"X-H{index:05d}: {'v' * 50}" for index in range(2000)]
    status = status_of(server.port, request_bytes("GET /", *fields))
    assert status == 431, f"expected 431 for 2000 fields of 60 bytes, got {status}"
    assert_serves(server.port)


def test_default_body_limit_is_16_mib(server):
    body = b"b" * DEFAULT_MAX_BODY
    document = get_json(server.port, "/big", method="POST", body=body)
    assert document["body_length"] == DEFAULT_MAX_BODY, document["body_length"]
    assert document["body_sha256"] == hashlib.sha256(body).hexdigest()
    over = request_bytes("POST /big", f"Content-Length: {DEFAULT_MAX_BODY + 1}")
    status = status_of(server.port, over + b"b" * 1000)
    assert status == 413, f"expected 413 for 16 MiB + 1, got {status}"
    assert_serves(server.port)


def test_post_without_content_length_gets_411(server):
    status = status_of(server.port, request_bytes("POST /nolength", body=b"some body"))
    assert status == 411, f"expected 411, got {status}"
    assert_serves(server.port)


@pytest.mark.parametrize("value", ["abc", "-1", "+5", "0x10", "1 2", "5, 6", "", "٣"])
def test_malformed_content_length_gets_400(server, value):
    data = request_bytes("POST /bad", body=b"12345").replace(
        b"Host: x\r\n", f"Host: x\r\nContent-Length: {value}\r\n".encode()
    )
    status = status_of(server.port, data)
    assert status == 400, f"Content-Length {value!r}: expected 400, got {status}"
    assert_serves(server.port)


def test_repeated_identical_content_length_is_one_length(server):
    data = request_bytes("POST /same", "Accept: application/json", "Content-Length: 5",
                         "Content-Length: 5", body=b"hello")
    status, _, body = parse_response(exchange(server.port, data))
    assert status == 200 and json.loads(body)["body_length"] == 5, (status, body)


def test_chunked_post_is_decoded(server):
    pieces = [b"hello ", b"chunked ", b"world" * 1000]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        # An iterable body without Content-Length is sent chunked.
        connection.request("POST", "/chunked", body=iter(pieces), headers=JSON)
        response = connection.getresponse()
        document = json.loads(response.read())
    finally:
        connection.close()
    expected = b"".join(pieces)
    assert response.status == 200
    sent = document["headers"]
    assert sent.get("Transfer-Encoding") == "chunked", sent
    assert document["body_length"] == len(expected), document["body_length"]
    assert document["body_sha256"] == hashlib.sha256(expected).hexdigest()


def test_chunk_extensions_and_trailers_are_accepted(server):
    chunks = b"5;name=value\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
    data = request_bytes("POST /ext", "Accept: application/json",
                         "Transfer-Encoding: chunked", body=chunks)
    status, _, body = parse_response(exchange(server.port, data))
    expected = hashlib.sha256(b"hello0123456789").hexdigest()
    assert status == 200 and json.loads(body)["body_sha256"] == expected, body


@pytest.mark.parametrize("chunks", [
    b"zz\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"5" + b";e" * 3000 + b"\r\nhello\r\n0\r\n\r\n",
])
def test_malformed_chunked_body_gets_400(server, chunks):
    data = request_bytes("POST /badchunk", "Transfer-Encoding: chunked", body=chunks)
    status = status_of(server.port, data)
    assert status == 400, f"{chunks[:20]!r}...: expected 400, got {status}"
    assert_serves(server.port)


@pytest.mark.parametrize("fields, expected", [
    (("Transfer-Encoding: chunked", "Content-Length: 5"), 400),
    (("Transfer-Encoding: gzip, chunked",), 501),
    (("Expect: something-else", "Content-Length: 0"), 417),
    (("No-Colon-Here",), 400),
    (("X-Ok: 1", "  folded continuation"), 400),
    (("Bad Name: x",), 400),
])
def test_malformed_framing_or_fields_are_refused(server, fields, expected):
    status = status_of(server.port, request_bytes("POST /framing", *fields))
    assert status == expected, f"{fields}: expected {expected}, got {status}"
    assert_serves(server.port)


@pytest.mark.parametrize("line, expected", [
    (b"GET /", 400), (b"GET  / HTTP/1.1", 400), (b"G(T / HTTP/1.1", 400),
    (b"GET / HTTP/2.0", 505), (b"GET / HTTX/1.1", 400), (b"GET /\x01 HTTP/1.1", 400),
])
def test_malformed_request_line_is_refused(server, line, expected):
    status = status_of(server.port, line + b"\r\nHost: x\r\n\r\n")
    assert status == expected, f"{line!r}: expected {expected}, got {status}"
    assert_serves(server.port)


@pytest.mark.parametrize("start, fields, body, shown", [
    ("G\xc3\x89T {path}", (), b"", r"the method 'G\xc3\x89T' is not a token"),
    ("GET {path}", ("Bad\xc3\x89 Name: x",), b"",
     r"'Bad\xc3\x89 Name: x' is not a 'Name: value' line"),
    ("POST {path}", ("Content-Length: 1\xc3\x89",), b"",
     r"Content-Length '1\xc3\x89' is not a decimal number of bytes"),
    ("POST {path}", ("Transfer-Encoding: chunked",), b"z\xc3\x89\r\nabc\r\n0\r\n\r\n",
     r"chunk size 'z\xc3\x89' is not a hex number"),
], ids=["method", "field-line", "content-length", "chunk-size"])
def test_error_page_and_log_escape_non_ascii_bytes_once(server, start, fields, body, shown):
    path = f"/escaped-{uuid.uuid4().hex}"
    line = start.format(path=path)
    answer = exchange(server.port, request_bytes(line, *fields, body=body))
    status, _, page = parse_response(answer)
    text = page.decode("utf-8")
    assert status == 400, f"expected 400, got {status}: {text!r}"
    assert shown in text and "\\x5c" not in text, (
        f"expected {shown!r} (each byte escaped once) in the error page, got {text!r}")
    logged = line.replace("\xc3\x89", r"\xc3\x89")
    entry = server.wait_for(re.escape(f'"{logged} HTTP/1.1" 400')).string
    assert "\\x5c" not in entry, f"expected one escape in the access log, got {entry!r}"
    assert_serves(server.port)


def test_other_methods_get_501_with_allow(server):
    status, headers, _ = get(server.port, "/put", method="PUT", body=b"data")
    assert status == 501 and headers["allow"] == "GET, HEAD, POST", (status, headers)
    assert_serves(server.port)


def test_expect_100_continue_gets_interim_answer_before_body(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request_bytes("POST /expect", "Expect: 100-continue",
                                   "Accept: application/json", "Content-Length: 4"))
        interim = sock.recv(1024)
        sock.sendall(b"body")
        final = read_to_end(sock)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
    status, _, body = parse_response(final)
    assert status == 200 and json.loads(body)["body_length"] == 4, final[:300]


@pytest.mark.parametrize("sent", [b"", b"GET /partial HTTP/1.1\r\nHost: x\r\n"])
def test_silent_client_is_disconnected_after_idle_timeout(server, sent):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        data = read_to_end(sock)
        waited = time.monotonic() - started
    assert data == b"", f"expected a quiet close, got {data[:200]!r}"
    assert IDLE_TIMEOUT * 0.8 <= waited <= IDLE_TIMEOUT + 3, (
        f"expected a disconnect after about {IDLE_TIMEOUT} s, it took {waited:.2f} s"
    )
    assert_serves(server.port)


def test_empty_connections_are_closed_without_traceback(server):
    for _ in range(10):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        # Linger on, timeout 0: close with a reset, as an aborted health check does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    marker = f"/after-empty-{uuid.uuid4().hex}"
    get(server.port, marker)
    server.wait_for(re.escape(marker))
    assert "Traceback" not in server.stderr, server.stderr
    assert_serves(server.port)


@pytest.mark.parametrize("path", [
    "/etc/passwd", "/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/servers/http_server.py", "/./servers/_http.py",
])
def test_paths_name_the_path_and_never_serve_a_file(server, path):
    status, _, body = get(server.port, path)
    page = body.decode("utf-8")
    assert status == 200 and f"<dd>{path}</dd>" in page, page
    for file in (Path("/etc/passwd"), REPO_ROOT / "servers" / "http_server.py",
                 REPO_ROOT / "servers" / "_http.py"):
        first_line = file.read_text().splitlines()[0]
        assert first_line not in page, f"{path} served content of {file}:\n{page}"


def test_bytes_path_answers_n_generated_bytes(server):
    length = 3 * 256 * 1024 + 1000  # several blocks and a partial one
    status, headers, body = get(server.port, f"/bytes/{length}?ignored=1")
    expected = bytes(index % 256 for index in range(length))
    assert status == 200, f"expected 200, got {status}: {body[:200]!r}"
    assert headers["content-type"] == "application/octet-stream", headers
    assert headers["content-length"] == str(length), headers
    assert len(body) == length and body == expected, (
        f"expected {length} bytes of the i % 256 pattern, got {len(body)} bytes "
        f"starting {body[:16]!r}"
    )


def test_bytes_path_head_sends_length_and_keeps_connection(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request("HEAD", "/bytes/5000")
        head = connection.getresponse()
        head_body = head.read()
        connection.request("GET", "/bytes/0")
        empty = connection.getresponse()
        empty_body = empty.read()
    finally:
        connection.close()
    assert head.status == 200 and head.getheader("Content-Length") == "5000", (
        f"expected 200 with Content-Length 5000, got {head.status} {head.getheaders()}"
    )
    assert head_body == b"" and empty.status == 200 and empty_body == b"", (
        f"expected empty bodies, got {head_body[:20]!r} and {empty_body[:20]!r}"
    )


def test_bytes_path_over_1_gib_gets_400_naming_the_limit(server):
    status, _, body = get(server.port, f"/bytes/{(1 << 30) + 1}")
    assert status == 400, f"expected 400, got {status}"
    assert b"more than 1073741824 bytes" in body, body
    assert_serves(server.port)


@pytest.mark.parametrize("digits", ["9" * 21, "1" + "0" * 5000],
                         ids=["21-digits", "5001-digits"])
def test_bytes_path_with_a_long_number_gets_400_naming_the_limit(server, digits):
    status, headers, body = get(server.port, f"/bytes/{digits}")
    assert status == 400, f"expected 400 for a {len(digits)}-digit N, got {status}"
    assert headers["content-type"].startswith("text/plain"), headers
    assert b"more than 1073741824 bytes" in body, body
    assert len(body) < 300, f"expected the page to cut N short, got {len(body)} bytes"
    assert_serves(server.port)


def test_bytes_path_leading_zeros_do_not_change_the_count(server):
    status, headers, body = get(server.port, "/bytes/" + "0" * 30 + "5")
    assert (status, headers["content-type"], body) == (
        200, "application/octet-stream", bytes(range(5))), (status, headers, body[:100])


def test_post_to_bytes_path_gets_the_page_with_its_body(server):
    status, headers, data = get(server.port, "/bytes/10", method="POST", body=b"echo me")
    page = data.decode("utf-8")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8", headers
    assert "<pre>echo me</pre>" in page and "<dd>/bytes/10</dd>" in page, page


def test_200_concurrent_clients_are_served(server):
    clients = 200
    barrier = threading.Barrier(clients, timeout=20)
    results: Dict[int, Tuple[int, bool]] = {}
    errors: List[str] = []

    def client(index: int) -> None:
        try:
            barrier.wait()
            address = ("127.0.0.1", server.port)
            with socket.create_connection(address, timeout=15) as sock:
                sock.sendall(request_bytes(f"GET /many/{index}", *JSON_FIELD))
                status, _, body = parse_response(read_to_end(sock))
                seen_port = json.loads(body)["client_port"]
                results[index] = (status, seen_port == sock.getsockname()[1])
        except Exception as error:  # noqa: BLE001 (reported below, per client)
            errors.append(f"client {index}: {error!r}")

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - started
    assert not errors, errors[:5]
    assert len(results) == clients, f"{len(results)} of {clients} answered"
    assert set(results.values()) == {(200, True)}, set(results.values())
    assert elapsed < 15, f"200 clients took {elapsed:.1f} s"
    assert_serves(server.port)


def test_access_log_has_one_common_log_line_per_request(server):
    path = f"/logged-{uuid.uuid4().hex}"
    _, _, body = get(server.port, path)
    exchange(server.port, f"POST {path}-411 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    get(server.port, path + '"quoted"', method="HEAD")
    line = r'^127\.0\.0\.1 - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
    found = server.wait_for(line + rf'"GET {path} HTTP/1\.1" 200 (\d+)$')
    logged = int(found.group(1))
    assert logged == len(body), f"expected {len(body)} bytes logged, got {logged}"
    server.wait_for(line + rf'"POST {path}-411 HTTP/1\.1" 411 \d+$')
    # A quote in the request line is escaped, so it cannot end the quoted field.
    server.wait_for(line + rf'"HEAD {path}\\x22quoted\\x22 HTTP/1\.1" 200 -$')
    count = len(re.findall(rf'"GET {path} ', server.stderr))
    assert count == 1, f"expected one line for the GET, got {count}:\n{server.stderr}"


@pytest.mark.parametrize("chunks, status", [
    (b"zz\r\nhello\r\n0\r\n\r\n", 400),  # a chunk size that is not hexadecimal
    (b"%x\r\n" % (DEFAULT_MAX_BODY + 1), 413),  # a chunk larger than the body limit
])
def test_refused_chunked_body_is_logged_with_its_request_line(server, chunks, status):
    path = f"/chunked-{uuid.uuid4().hex}"
    raw = request_bytes(f"POST {path}", "Transfer-Encoding: chunked", body=chunks)
    assert status_of(server.port, raw) == status
    line = r'^127\.0\.0\.1 - - \[[^]]+\] '
    server.wait_for(line + rf'"POST {path} HTTP/1\.1" {status} \d+$')


def test_head_refused_on_the_bytes_path_sends_no_body_and_keeps_the_connection(server):
    # Raw bytes: http.client drops whatever follows a HEAD answer in its buffer.
    head = f"HEAD /bytes/{(1 << 30) + 1} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    follow = request_bytes("GET /after-head", *JSON_FIELD)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head)
        time.sleep(0.2)  # the answer to the HEAD alone, before the next request is sent
        sock.sendall(follow)
        raw = read_to_end(sock)
    first, _, rest = raw.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 400 "), raw[:200]
    assert b"content-length: " in first.lower() and b"connection: close" not in first.lower()
    assert rest.startswith(b"HTTP/1.1 200 "), (
        f"expected the next answer right after the HEAD's head, got {rest[:120]!r}")
    assert json.loads(parse_response(rest)[2])["path"] == "/after-head"


@pytest.mark.parametrize("module, port", [("http_server", 8080), ("https_server", 8443)])
def test_defaults_are_every_address_the_servers_port_and_the_documented_limits(module, port):
    import argparse
    import importlib

    from servers._cli import add_server_arguments, chosen_port, limits_from

    default_port = importlib.import_module(f"servers.{module}").DEFAULT_PORT
    parser = argparse.ArgumentParser()
    add_server_arguments(parser, default_port)
    args = parser.parse_args([])
    limits = limits_from(args)
    assert args.listen == "0.0.0.0", f"expected 0.0.0.0 as on an instance, got {args.listen}"
    assert chosen_port(parser, args, default_port) == port
    assert (limits.max_request_line, limits.max_header_bytes, limits.max_body,
            limits.idle_timeout) == (8 * 1024, 64 * 1024, DEFAULT_MAX_BODY, 30.0), limits


def test_bare_positional_port_is_used():
    port = free_port()
    process = start_server("servers.http_server", str(port))
    try:
        assert process.port == port, f"expected to listen on {port}, got {process.port}"
        assert get(process.port, "/")[0] == 200
    finally:
        stop_cleanly(process)


def run_http_server(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "servers.http_server", "-l", "127.0.0.1", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=20, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args, message", [
    (["-p", "70000"], "'70000' is not a port"),
    (["-p", "8081", "8082"], "-p 8081 and PORT 8082 disagree"),
    (["--max-body", "lots"], "'lots' is not a byte count"),
    (["--idle-timeout", "0"], "'0' is not a timeout"),
    (["--idle-timeout", "inf"], "'inf' is not a timeout"),
    (["-l", ""], "'' is not an address: an address is required"),
    (["-l", " "], "0.0.0.0 or :: for every interface"),
    (["--parent-pid", "0"], "'0' is not a process id"),
    (["--parent-pid", "x1"], "'x1' is not a process id"),
])
def test_bad_options_exit_2_naming_the_value(args, message):
    result = run_http_server(*args)
    assert result.returncode == 2, f"expected exit status 2, got {result.returncode}"
    assert message in result.stderr, result.stderr


def test_make_server_refuses_an_empty_address_instead_of_every_interface():
    from servers.http_server import make_server

    with pytest.raises(ValueError) as refused:
        make_server("", 0)
    assert "'' is empty" in str(refused.value) and "0.0.0.0 or ::" in str(refused.value)


def test_address_in_use_exits_2_with_message():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_http_server("-p", str(port))
    assert result.returncode == 2, f"expected exit status 2, got {result.returncode}"
    assert f"cannot listen on 127.0.0.1 port {port}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_body_over_max_body_option_gets_413():
    process = start_server("servers.http_server", "-p", "0", "--max-body", "1000")
    try:
        fits = get_json(process.port, "/fits", method="POST", body=b"x" * 1000)
        assert fits["body_length"] == 1000, fits
        status, _, _ = get(process.port, "/over", method="POST", body=b"x" * 1001)
        assert status == 413, f"expected 413 for 1001 bytes over 1000, got {status}"
        chunks = (b"1F4\r\n" + b"y" * 500 + b"\r\n") * 3
        data = request_bytes("POST /chunked-over", "Transfer-Encoding: chunked",
                             body=chunks)
        status = status_of(process.port, data)
        assert status == 413, f"expected 413 for 1500 chunked bytes, got {status}"
        assert_serves(process.port)
    finally:
        stop_cleanly(process)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_stops_server_with_status_0(sig):
    process = start_server("servers.http_server", "-p", "0")
    idle = socket.create_connection(("127.0.0.1", process.port), timeout=5)
    try:
        assert get(process.port, "/before-stop")[0] == 200
        started = time.monotonic()
        status = process.stop(sig)
        elapsed = time.monotonic() - started
    finally:
        idle.close()
    assert status == 0, f"expected 0 on {sig.name}, got {status}:\n{process.stderr}"
    # Well under the 30 s idle timeout: an open connection is cut, not waited out.
    assert elapsed < 20, f"stopping took {elapsed:.1f} s with a connection open"
    assert f"stopping on {sig.name}" in process.stderr, process.stderr
    assert "Traceback" not in process.stderr, process.stderr


IN_PROCESS_SCRIPT = """
import json, urllib.request
from servers.http_server import make_server
server = make_server("127.0.0.1", 0)
server.start()
url = server.url + "in-process"
request = urllib.request.Request(url, headers={"Accept": "application/json"})
with urllib.request.urlopen(request, timeout=5) as response:
    document = json.load(response)
server.stop()
try:
    urllib.request.urlopen(server.url, timeout=2)
    refused = False
except OSError:
    refused = True
outcome = {"port": server.port, "document": document, "refused_after_stop": refused}
print(json.dumps(outcome))
"""


def test_make_server_serves_in_process_and_stops():
    result = subprocess.run([sys.executable, "-W", "error", "-c", IN_PROCESS_SCRIPT],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["document"]["path"] == "/in-process", outcome
    assert outcome["document"]["listen_port"] == outcome["port"] != 0, outcome
    assert outcome["refused_after_stop"] is True, outcome
