"""The threaded HTTP/1.1 server both backends run: connections, answers, access log."""

# A thread per connection (daemon threads, so a client holding a keep-alive connection
# never keeps the process alive) and a listen backlog of 256, so a burst of clients is
# queued by the kernel instead of refused. Every accepted socket gets TCP_NODELAY: an
# answer is one small write, and Nagle's algorithm would hold it back for an ACK.

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from email.utils import formatdate
from http import HTTPStatus
from typing import List, Optional, Set

from ._page import (
    BULK_CONTENT_TYPE,
    BulkTooLarge,
    Connection,
    Page,
    TlsSession,
    bulk_block,
    bulk_length,
    render,
    wants_json,
)
from ._request import ClientGone, HttpError, Limits, printable, read_body, read_head

__all__ = ["BackendServer", "SNI_ATTRIBUTE", "access_log", "host_port"]

_log = logging.getLogger(__name__)
access_log = logging.getLogger("servers.access")

METHODS = ("GET", "HEAD", "POST")
# The attribute the SNI callback sets on an SSLSocket (see https_server.record_sni).
SNI_ATTRIBUTE = "sni_server_name"
_READ_BUFFER = 64 * 1024
# After an error answer the client may still be sending (a body over the limit, the rest
# of a long line). Closing with unread data makes the kernel send a reset, which can
# destroy the answer before the client reads it; so the server stops writing, then reads
# and discards for up to this long (Apache's "lingering close").
_LINGER_SECONDS = 2.0
# What an empty listen address is refused with (here and in the command line).
ADDRESS_ACCEPTED = (
    "give an address: 127.0.0.1 or ::1 for loopback, 0.0.0.0 or :: for every interface"
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class BackendServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A listening backend; kind is "http" or "https" (then ssl_context is required).

    address is required: socket's empty address means every interface, which must be
    asked for as 0.0.0.0 or :: (ValueError for ""). Binding happens in the constructor
    (OSError when the address cannot be used), so server_address holds the real port
    when port 0 was asked for. Serve with
    serve_forever() or start(); end with shutdown() and server_close(), or stop().
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self,
        address: str,
        port: int,
        *,
        kind: str,
        limits: Optional[Limits] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        if (kind == "https") != (ssl_context is not None):
            raise ValueError(f"kind {kind!r} needs ssl_context only for 'https'")
        if not address.strip():
            raise ValueError(f"the listen address {address!r} is empty; {ADDRESS_ACCEPTED}")
        self.kind = kind
        self.limits = limits or Limits()
        self.ssl_context = ssl_context
        self.hostname = socket.gethostname()
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._thread: Optional[threading.Thread] = None
        self._connections: Set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__((address, port), _ConnectionHandler)

    @property
    def listen_address(self) -> str:
        return str(self.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        """The base URL (a wildcard listen address is shown as the loopback address)."""
        wildcards = {"0.0.0.0": "127.0.0.1", "::": "::1"}
        host = wildcards.get(self.listen_address, self.listen_address)
        return f"{self.kind}://{host_port(host, self.port)}/"

    def start(self) -> threading.Thread:
        """Serve in a daemon thread; returns the thread."""
        # A short poll interval: stop() (and so SIGTERM) takes at most this long.
        self._thread = threading.Thread(
            target=self.serve_forever,
            args=(0.1,),
            name=f"{self.kind}-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """Stop accepting, close the listening socket, and cut every open connection."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
        with self._connections_lock:
            open_connections = list(self._connections)
        for sock in open_connections:
            try:
                # The plain socket's shutdown: SSLSocket.shutdown would also drop the
                # TLS object under the thread that is reading from it.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def get_request(self):  # noqa: ANN201 (socketserver's signature)
        sock, client_address = self.socket.accept()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return sock, client_address

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        # Expected failures (timeouts, resets, failed handshakes) end in the handler;
        # what reaches here is a bug, and gets a traceback through logging.
        _log.exception("unexpected error serving %s", host_port(*client_address[:2]))

    def track(self, sock: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(sock)
            else:
                self._connections.discard(sock)


class _ConnectionHandler(socketserver.BaseRequestHandler):
    """Serves one connection: the TLS handshake if any, then requests until it ends."""

    server: BackendServer

    def handle(self) -> None:
        sock = self.request
        peer = host_port(*self.client_address[:2])
        self.server.track(sock, True)
        try:
            sock.settimeout(self.server.limits.idle_timeout)
            if self.server.ssl_context is not None:
                self.server.track(sock, False)
                sock = self.server.ssl_context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
                self.server.track(sock, True)
                sock.do_handshake()
            self._serve(sock)
        except (OSError, ClientGone) as error:
            # Health checks, the NLB's connectivity test and TLS probes connect and
            # leave, or go quiet: normal traffic for a target, not worth a traceback.
            reason = str(error) or type(error).__name__
            _log.debug("connection from %s closed: %s", peer, reason)
        finally:
            self.server.track(sock, False)
            if sock is not self.request:
                sock.close()

    def _serve(self, sock: socket.socket) -> None:
        connection = _describe(self.server, sock, self.client_address)
        rfile = sock.makefile("rb", _READ_BUFFER)
        try:
            while self._answer_one(sock, rfile, connection):
                pass
        finally:
            rfile.close()

    def _answer_one(self, sock: socket.socket, rfile, connection: Connection) -> bool:
        """Read and answer one request; whether the connection stays open."""
        limits = self.server.limits
        try:
            request = read_head(rfile, limits)
            if request is None:
                return False
            has_body = request.chunked or bool(request.content_length)
            if request.expect_continue and has_body:
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = read_body(rfile, request, limits)
        except HttpError as error:
            self._refuse(sock, error, connection)
            return False
        answer = _Answer(connection, request.request_line, request.version,
                         request.keep_alive)
        with_body = request.method != "HEAD"
        if request.method not in METHODS:
            detail = f"{request.method} is not supported; {', '.join(METHODS)} are"
            answer.send(sock, 501, _error_page(501, detail))
            return request.keep_alive
        try:
            bulk = bulk_length(request.target) if request.method != "POST" else None
        except BulkTooLarge as error:
            answer.send(sock, 400, _error_page(400, str(error)), with_body=with_body)
            return request.keep_alive
        if bulk is not None:
            answer.stream(sock, bulk, with_body=with_body)
        else:
            as_json = wants_json(request.header("accept"))
            page = render(request, body, connection, as_json)
            answer.send(sock, 200, page, with_body=with_body)
        return request.keep_alive

    def _refuse(
        self, sock: socket.socket, error: HttpError, connection: Connection
    ) -> None:
        _log.debug("refusing a request from %s: %d %s", connection.client_address,
                   error.status, printable(error.detail))
        answer = _Answer(connection, error.request_line, "HTTP/1.1", keep_alive=False)
        answer.send(sock, error.status, _error_page(error.status, error.detail))
        _linger(sock)


@dataclass(frozen=True)
class _Answer:
    """How to answer one request: its connection, its request line, keep open or not."""

    connection: Connection
    request_line: str
    version: str
    keep_alive: bool

    def send(
        self, sock: socket.socket, status: int, page: Page, with_body: bool = True
    ) -> None:
        """Write the answer in a single send, then its access-log line."""
        head = self._head(status, page.content_type, len(page.body))
        body = page.body if with_body else b""
        sock.sendall(head + body)
        access_log.info(
            '%s - - [%s] "%s" %d %s', self.connection.client_address, _log_time(),
            printable(self.request_line), status, len(body) or "-",
        )

    def stream(self, sock: socket.socket, length: int, with_body: bool = True) -> None:
        """Answer 200 with `length` generated bytes (GET /bytes/N), sent block by block."""
        sock.sendall(self._head(200, BULK_CONTENT_TYPE, length))
        block = memoryview(bulk_block())
        remaining = length if with_body else 0
        while remaining > 0:
            part = block[:min(remaining, len(block))]
            sock.sendall(part)
            remaining -= len(part)
        access_log.info(
            '%s - - [%s] "%s" %d %s', self.connection.client_address, _log_time(),
            printable(self.request_line), 200, (length if with_body else 0) or "-",
        )

    def _head(self, status: int, content_type: str, length: int) -> bytes:
        headers = [
            ("Date", formatdate(usegmt=True)),
            ("Server", f"servers.{self.connection.kind}_server"),
            ("Content-Type", content_type),
            ("Content-Length", str(length)),
            ("Cache-Control", "no-store"),
        ]
        if status == 501:
            headers.append(("Allow", ", ".join(METHODS)))
        if not self.keep_alive:
            headers.append(("Connection", "close"))
        elif self.version == "HTTP/1.0":
            headers.append(("Connection", "keep-alive"))
        lines: List[str] = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
        lines += [f"{name}: {value}" for name, value in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _error_page(status: int, detail: str) -> Page:
    text = f"{status} {HTTPStatus(status).phrase}\n{printable(detail)}\n"
    return Page("text/plain; charset=utf-8", text.encode("utf-8"))


def _linger(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + _LINGER_SECONDS
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            sock.settimeout(remaining)
            if not sock.recv(_READ_BUFFER):
                return
    except OSError:
        return


def _describe(server: BackendServer, sock: socket.socket, client_address) -> Connection:
    """The connection as the server sees it, after any TLS handshake."""
    local = sock.getsockname()
    tls = None
    if isinstance(sock, ssl.SSLSocket):
        cipher = sock.cipher()
        tls = TlsSession(
            version=sock.version() or "",
            cipher=cipher[0] if cipher else "",
            server_name=getattr(sock, SNI_ATTRIBUTE, None),
            alpn_protocol=sock.selected_alpn_protocol(),
        )
    return Connection(
        kind=server.kind,
        hostname=server.hostname,
        listen_address=server.listen_address,
        listen_port=server.port,
        local_address=str(local[0]),
        local_port=int(local[1]),
        client_address=str(client_address[0]),
        client_port=int(client_address[1]),
        tls=tls,
    )


def _log_time() -> str:
    """The common log format's time, 10/Oct/2000:13:55:36 -0700, English month names."""
    now = datetime.now().astimezone()
    return f"{now.day:02d}/{_MONTHS[now.month - 1]}/{now:%Y:%H:%M:%S %z}"


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
