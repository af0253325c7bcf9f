"""The HTTPS backend's SNI name comes from the ClientHello, peeked without consuming it."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import List, Optional, Tuple

import pytest

from servers._client_hello import peek_server_name

pytestmark = pytest.mark.unit


def client_hello(server_name: Optional[str]) -> bytes:
    """The first flight of Python's TLS client: one record holding a ClientHello."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def split_into_records(flight: bytes, first_part: int) -> bytes:
    """The same handshake message carried in two records, the first of first_part bytes."""
    assert flight[0] == 22, f"expected a handshake record, got type {flight[0]}"
    version, message = flight[1:3], flight[5:]
    parts = [message[:first_part], message[first_part:]]
    return b"".join(b"\x16" + version + len(part).to_bytes(2, "big") + part
                    for part in parts)


def tcp_pair() -> Tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (server end, client end), as the backend accepts:
    the wait for a whole ClientHello relies on TCP's SO_RCVLOWAT, which AF_UNIX lacks."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2], timeout=10)
        server, _ = listener.accept()
    return server, client


def peek_from_pair(pieces: List[bytes]) -> Tuple[Optional[str], bytes]:
    """The name peeked from the far end of a TCP pair the pieces are written to, with
    a pause between them, and all the bytes read after: the peek must leave them."""
    server, client = tcp_pair()
    with server, client:
        server.settimeout(10)

        def send() -> None:
            for piece in pieces:
                client.sendall(piece)
                time.sleep(0.2)  # each piece arrives on its own, as TCP segments may

        writer = threading.Thread(target=send)
        writer.start()
        try:
            name = peek_server_name(server)
        finally:
            writer.join()
        total = sum(len(piece) for piece in pieces)
        received = b""
        while len(received) < total:
            received += server.recv(total - len(received))
    return name, received


def test_server_name_is_peeked_and_left_for_the_handshake():
    flight = client_hello("backend.example")
    name, received = peek_from_pair([flight])
    assert name == "backend.example", f"expected backend.example, got {name!r}"
    assert received == flight, "expected the ClientHello still unread after the peek"


def test_client_hello_split_across_records_and_segments_is_read_whole():
    flight = split_into_records(client_hello("split.example"), first_part=40)
    pieces = [flight[:3], flight[3:60], flight[60:]]
    name, received = peek_from_pair(pieces)
    assert name == "split.example", f"expected split.example, got {name!r}"
    assert received == flight, "expected every record still unread after the peek"


@pytest.mark.parametrize("data", [b"", b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05hello",
                                  b"\x16\x03"])
def test_what_is_not_a_client_hello_has_no_server_name(data):
    server, client = tcp_pair()
    with server, client:
        server.settimeout(10)
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        name = peek_server_name(server)
    assert name is None, f"expected no name for {data!r}, got {name!r}"


def test_client_hello_without_sni_has_no_server_name():
    name, _ = peek_from_pair([client_hello(None)])
    assert name is None, f"expected no name, got {name!r}"
