"""The SNI server name of a TLS ClientHello, read from a socket without consuming it."""

# The ssl module's sni_callback cannot report every name a client sends: CPython decodes
# the name as ASCII before calling it, and for any other byte it prints "Exception
# ignored ... UnicodeDecodeError" and fails the handshake with an internal_error alert.
# A target must show what arrived, so the server peeks at the ClientHello (MSG_PEEK
# leaves it for OpenSSL) and takes the name from it, Latin-1 decoded so every byte is
# kept, as the request's header fields are.
#
# Record layout (RFC 8446, 5.1 and 4.1.2; RFC 6066, 3 for server_name): records of
# type 22 (handshake) carry a ClientHello (type 1) that may span several records; its
# extensions follow the session id, cipher suites and compression methods.
#
# The name is best effort: a ClientHello that is not all buffered when the kernel says
# the socket is readable (under memory pressure), or one larger than _MAX_PEEK, yields
# None, and the handshake goes on as usual.

from __future__ import annotations

import socket
from typing import Optional

__all__ = ["peek_server_name"]

_HANDSHAKE_RECORD = 22
_CLIENT_HELLO = 1
_SERVER_NAME_EXTENSION = 0
_HOST_NAME = 0
_RECORD_HEADER = 5
# Far above any ClientHello seen in practice (post-quantum key shares make about 2 KiB),
# and within the receive buffer, so waiting for this much can succeed.
_MAX_PEEK = 64 * 1024


def peek_server_name(sock: socket.socket) -> Optional[str]:
    """The server_name the waiting ClientHello asks for, Latin-1 decoded; else None.

    None also when what waits is not a ClientHello. Raises what the socket raises,
    socket.timeout included, while waiting for the ClientHello's bytes.
    """
    hello = _peek_client_hello(sock)
    return None if hello is None else _server_name(hello)


def _peek_client_hello(sock: socket.socket) -> Optional[bytes]:
    """The ClientHello's body (after its 4-byte header), gathered from its records."""
    message = b""
    offset = 0
    while offset + _RECORD_HEADER <= _MAX_PEEK:
        header = _peek(sock, offset + _RECORD_HEADER)[offset:]
        if len(header) < _RECORD_HEADER or header[0] != _HANDSHAKE_RECORD:
            return None
        end = offset + _RECORD_HEADER + int.from_bytes(header[3:5], "big")
        if end > _MAX_PEEK:
            return None
        record = _peek(sock, end)
        if len(record) < end:
            return None
        message += record[offset + _RECORD_HEADER:]
        offset = end
        if len(message) >= 4:
            if message[0] != _CLIENT_HELLO:
                return None
            total = 4 + int.from_bytes(message[1:4], "big")
            if len(message) >= total:
                return message[4:total]
    return None


def _peek(sock: socket.socket, size: int) -> bytes:
    """Up to size bytes from the receive buffer, left there for the TLS handshake.

    SO_RCVLOWAT makes the readiness poll that a socket with a timeout does before recv
    wait until size bytes are buffered (or the stream ends): a bare MSG_PEEK returns at
    once with whatever part has arrived, and MSG_WAITALL does not wait on the
    non-blocking descriptor Python uses under a timeout.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
    except (AttributeError, OSError):  # no SO_RCVLOWAT: take what is there
        pass
    try:
        return sock.recv(size, socket.MSG_PEEK)
    finally:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        except (AttributeError, OSError):
            pass


def _server_name(hello: bytes) -> Optional[str]:
    """The first host_name in the server_name extension of a ClientHello body."""
    position = 2 + 32  # legacy_version, random
    position = _skip(hello, position, 1)  # legacy_session_id
    position = _skip(hello, position, 2)  # cipher_suites
    position = _skip(hello, position, 1)  # legacy_compression_methods
    if position + 2 > len(hello):
        return None  # no extensions (an SSL 3.0-style hello) or a truncated one
    end = min(len(hello), position + 2 + _number(hello, position, 2))
    position += 2
    while position + 4 <= end:
        kind = _number(hello, position, 2)
        length = _number(hello, position + 2, 2)
        data = hello[position + 4:position + 4 + length]
        if kind == _SERVER_NAME_EXTENSION:
            return _host_name(data)
        position += 4 + length
    return None


def _host_name(extension: bytes) -> Optional[str]:
    # server_name_list length (2), then name_type (1), name length (2), name.
    if len(extension) < 5 or extension[2] != _HOST_NAME:
        return None
    name = extension[5:5 + _number(extension, 3, 2)]
    return name.decode("latin-1")


def _skip(data: bytes, position: int, length_bytes: int) -> int:
    """The position after a field of length_bytes length prefix and its content."""
    if position + length_bytes > len(data):
        return len(data) + 1
    return position + length_bytes + _number(data, position, length_bytes)


def _number(data: bytes, position: int, size: int) -> int:
    return int.from_bytes(data[position:position + size], "big")
