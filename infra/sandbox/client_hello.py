"""Read the TLS ClientHello a client sends first: SNI, ALPN, versions and cipher suites."""

# The data plane needs these before (and whether or not) the handshake succeeds: the access
# log records the SNI and the client's ALPN list even for a refused handshake, and a garbage
# first flight must be told apart from a ClientHello that is still arriving.
#
# Wire format: RFC 8446 section 5.1 (records) and 4.1.2 (ClientHello), RFC 6066 section 3
# (server_name), RFC 7301 section 3.1 (ALPN). A ClientHello may span several handshake
# records. SSLv2-format hellos (first byte 0x80) are not read: no client the suite or the
# NLB's policies care about sends them, and they carry neither SNI nor ALPN.

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["ClientHello", "NeedMoreData", "NotAClientHello", "parse_client_hello"]

_HANDSHAKE_RECORD = 22
_CLIENT_HELLO = 1
_RECORD_HEADER = 5
_HANDSHAKE_HEADER = 4
_MAX_RECORD = 2**14  # RFC 8446 5.1: a plaintext fragment is at most 2^14 bytes
_MAX_CLIENT_HELLO = 131396  # OpenSSL's CLIENT_HELLO_MAX_LENGTH; longer is refused
_SERVER_NAME, _ALPN, _SUPPORTED_VERSIONS = 0, 16, 43
_HOST_NAME = 0
_EXTENSION_HEADER = struct.Struct(">HH")  # type, length


class NeedMoreData(Exception):
    """The bytes so far are a valid beginning of a ClientHello, but it is not complete."""


class NotAClientHello(ValueError):
    """The bytes are not (the beginning of) a TLS ClientHello; the message says why."""


@dataclass(frozen=True)
class ClientHello:
    """What the client offered.

    `server_name` is the first host_name of the SNI extension, None without one;
    `alpn_protocols` the ALPN list in the client's order, () without the extension; both are
    the client's bytes decoded as latin-1, so every byte survives. `legacy_version` and the
    entries of `supported_versions` (() without the extension) are wire codes (0x0303 is TLS
    1.2, 0x0304 TLS 1.3); `cipher_suites` are IANA codes in the client's order, GREASE values
    included; `extension_types` likewise; `length` is how many bytes of the input, record
    headers included, it took to reach the ClientHello's last byte.
    """

    server_name: str | None
    alpn_protocols: tuple[str, ...]
    legacy_version: int
    supported_versions: tuple[int, ...]
    cipher_suites: tuple[int, ...]
    extension_types: tuple[int, ...]
    length: int

    @property
    def max_version(self) -> int:
        """The highest version offered: from supported_versions when sent (GREASE left
        out), else legacy_version, as a TLS 1.3 server reads it."""
        offered = [v for v in self.supported_versions if not _is_grease(v)]
        return max(offered) if offered else self.legacy_version


def parse_client_hello(data: bytes) -> ClientHello:
    """Parse the ClientHello at the start of `data` (bytes after it are ignored).

    Raises NeedMoreData while `data` is a valid but incomplete beginning, NotAClientHello
    as soon as it cannot be one; never anything else, whatever the bytes.
    """
    message, complete, length = _handshake_message(bytes(data))
    reader = _Reader(message, 0, len(message) if complete else _declared_end(message))
    hello = _read_client_hello(reader)
    return ClientHello(**hello, length=length)


def _declared_end(message: bytes) -> int:
    return _HANDSHAKE_HEADER + int.from_bytes(message[1:4], "big")


def _handshake_message(data: bytes) -> tuple[bytes, bool, int]:
    """Reassemble the first handshake message from the records; returns the bytes of it seen
    so far (header included), whether it is complete, and where in `data` it ended."""
    fragments = bytearray()
    offset = 0
    while True:
        header = data[offset : offset + _RECORD_HEADER]
        _check_record_header(header)
        if len(header) < _RECORD_HEADER:
            _check_handshake_prefix(fragments)
            raise NeedMoreData(f"record header: {len(header)} of 5 bytes")
        size = int.from_bytes(header[3:5], "big")
        body = data[offset + _RECORD_HEADER : offset + _RECORD_HEADER + size]
        fragments += body
        needed = _check_handshake_prefix(fragments)
        if needed is not None and len(fragments) >= needed:
            end = offset + _RECORD_HEADER + len(body) - (len(fragments) - needed)
            return bytes(fragments[:needed]), True, end
        if len(body) < size:
            if needed is None:
                raise NeedMoreData("handshake header incomplete")
            return bytes(fragments), False, 0
        offset += _RECORD_HEADER + size


def _check_record_header(header: bytes) -> None:
    if len(header) >= 1 and header[0] != _HANDSHAKE_RECORD:
        raise NotAClientHello(
            f"record content type {header[0]} where a handshake record (22) was expected"
        )
    if len(header) >= 2 and header[1] != 3:
        raise NotAClientHello(f"record version major byte {header[1]}, expected 3 (TLS)")
    if len(header) >= 3 and header[2] > 4:
        raise NotAClientHello(f"record version 3.{header[2]}, expected 3.0 to 3.4")
    if len(header) >= 5:
        size = int.from_bytes(header[3:5], "big")
        if not 0 < size <= _MAX_RECORD:
            raise NotAClientHello(f"record length {size}, expected 1 to {_MAX_RECORD}")


def _check_handshake_prefix(fragments: bytes) -> int | None:
    """Check the handshake header as far as it has arrived; return the message's full
    length once the header is complete, else None."""
    if len(fragments) >= 1 and fragments[0] != _CLIENT_HELLO:
        raise NotAClientHello(f"handshake type {fragments[0]}, expected 1 (ClientHello)")
    if len(fragments) < _HANDSHAKE_HEADER:
        return None
    size = int.from_bytes(fragments[1:4], "big")
    if size > _MAX_CLIENT_HELLO:
        raise NotAClientHello(f"ClientHello length {size}, more than {_MAX_CLIENT_HELLO}")
    return _HANDSHAKE_HEADER + size


class _Reader:
    """Reads one TLS vector from `data[pos:limit]`. Running past `limit` means the length
    fields disagree (NotAClientHello); running past the bytes that have arrived, while
    still inside `limit`, means NeedMoreData. (_read_extensions makes the same two checks
    inline, for speed: keep them alike.)"""

    def __init__(self, data: bytes, pos: int, limit: int) -> None:
        self.data, self.pos, self.limit = data, pos, limit

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > self.limit:
            raise NotAClientHello(f"{what}: {n} bytes do not fit in the {self.left} left")
        if end > len(self.data):
            raise NeedMoreData(what)
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def number(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")

    def vector(self, length_bytes: int, what: str, minimum: int = 0) -> _Reader:
        size = self.number(length_bytes, f"{what} length")
        if size < minimum or self.pos + size > self.limit:
            raise NotAClientHello(f"{what} length {size} (minimum {minimum}, {self.left} left)")
        child = _Reader(self.data, self.pos, self.pos + size)
        self.pos += size
        return child

    @property
    def left(self) -> int:
        return self.limit - self.pos

    def at_end(self) -> bool:
        return self.pos >= self.limit


def _read_client_hello(reader: _Reader) -> dict:
    reader.take(_HANDSHAKE_HEADER, "handshake header")
    legacy_version = reader.number(2, "legacy_version")
    if legacy_version >> 8 != 3:
        raise NotAClientHello(f"ClientHello version {legacy_version:#06x}, expected 0x03xx")
    reader.take(32, "random")
    if reader.vector(1, "session id").left > 32:
        raise NotAClientHello("session id longer than 32 bytes")
    suites = reader.vector(2, "cipher suites", minimum=2)
    if suites.left % 2:
        raise NotAClientHello(f"cipher suites length {suites.left} is odd")
    raw_suites = suites.take(suites.left, "cipher suites")
    cipher_suites = struct.unpack(f">{len(raw_suites) // 2}H", raw_suites)
    compression = reader.vector(1, "compression methods", minimum=1)
    compression.take(compression.left, "compression methods")
    extensions = {} if reader.at_end() else _read_extensions(reader.vector(2, "extensions"))
    if not reader.at_end():
        raise NotAClientHello(f"{reader.left} bytes after the extensions")
    return {
        "server_name": _server_name(extensions.get(_SERVER_NAME)),
        "alpn_protocols": _alpn(extensions.get(_ALPN)),
        "legacy_version": legacy_version,
        "supported_versions": _supported_versions(extensions.get(_SUPPORTED_VERSIONS)),
        "cipher_suites": cipher_suites,
        "extension_types": tuple(extensions),
    }


def _read_extensions(block: _Reader) -> dict[int, _Reader]:
    # The data plane parses every ClientHello it accepts, so this loop reads the 4-byte
    # extension headers directly instead of through _Reader calls: a browser-like hello
    # has 15 or more extensions.
    data, pos, limit = block.data, block.pos, block.limit
    extensions: dict[int, _Reader] = {}
    while pos < limit:
        if pos + 4 > limit:
            raise NotAClientHello(f"extension header: 4 bytes do not fit in the {limit - pos} "
                                  "left")
        if pos + 4 > len(data):
            raise NeedMoreData("extension header")
        kind, size = _EXTENSION_HEADER.unpack_from(data, pos)
        start, end = pos + 4, pos + 4 + size
        if end > limit:
            raise NotAClientHello(f"extension {kind} length {size} (minimum 0, "
                                  f"{limit - start} left)")
        if end > len(data):
            raise NeedMoreData(f"extension {kind}")
        if kind in extensions:
            # RFC 8446 4.2: no more than one extension of a type.
            raise NotAClientHello(f"extension {kind} appears twice")
        extensions[kind] = _Reader(data, start, end)
        pos = end
    block.pos = pos
    return extensions


def _server_name(body: _Reader | None) -> str | None:
    if body is None:
        return None
    names = body.vector(2, "server name list", minimum=1)
    if not body.at_end():
        raise NotAClientHello("bytes after the server name list")
    host_name = None
    while not names.at_end():
        name_type = names.number(1, "server name type")
        name = names.vector(2, "server name", minimum=1)
        value = name.take(name.left, "server name").decode("latin-1")
        if name_type == _HOST_NAME and host_name is None:
            host_name = value
    return host_name


def _alpn(body: _Reader | None) -> tuple[str, ...]:
    if body is None:
        return ()
    names = body.vector(2, "ALPN protocol list", minimum=2)
    if not body.at_end():
        raise NotAClientHello("bytes after the ALPN protocol list")
    protocols = []
    while not names.at_end():
        # RFC 7301 3.1: a protocol name is 1 to 255 bytes; empty ones are refused.
        name = names.vector(1, "ALPN protocol", minimum=1)
        protocols.append(name.take(name.left, "ALPN protocol").decode("latin-1"))
    return tuple(protocols)


def _supported_versions(body: _Reader | None) -> tuple[int, ...]:
    if body is None:
        return ()
    versions = body.vector(1, "supported versions", minimum=2)
    if versions.left % 2 or not body.at_end():
        raise NotAClientHello("supported_versions is not a list of 2-byte versions")
    return tuple(versions.number(2, "version") for _ in range(versions.left // 2))


def _is_grease(value: int) -> bool:
    # RFC 8701: GREASE code points are 0x?A?A with equal bytes.
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF
