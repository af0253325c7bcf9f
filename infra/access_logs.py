"""NLB access-log entries and log object keys, written and read exactly as AWS lays them out."""

# The format is the version 2.0 TLS entry of the NLB guide (load-balancer-access-logs): one
# line of space-separated fields, `-` for an absent value, fields added later appended at the
# end. Readers must ignore trailing fields they do not know and accept the 21-field lines
# written before tls_connection_creation_time was added in 2023.

from __future__ import annotations

import functools
import gzip
import ipaddress
import re
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable
from urllib.parse import quote, unquote_to_bytes

from infra._log_keys import (
    WINDOW,
    ArnError,
    LoadBalancerResource,
    LogObjectKey,
    LogObjectKeyError,
    elb_field,
    listener_id,
    load_balancer_resource,
    object_key,
    parse_object_key,
    window_end,
)

__all__ = [
    "ALPN_LIST_LIMIT",
    "FIELD_NAMES",
    "WINDOW",
    "AccessLogEntry",
    "AccessLogParseError",
    "ArnError",
    "InvalidEntryError",
    "LoadBalancerResource",
    "LogObjectError",
    "LogObjectKey",
    "LogObjectKeyError",
    "SocketAddress",
    "elb_field",
    "listener_id",
    "load_balancer_resource",
    "log_object_body",
    "object_key",
    "parse_line",
    "parse_object_key",
    "protocol_field",
    "read_log_object",
    "window_end",
]

FIELD_NAMES = (
    "type", "version", "time", "elb", "listener", "client", "destination",
    "connection_time", "tls_handshake_time", "received_bytes", "sent_bytes",
    "incoming_tls_alert", "chosen_cert_arn", "chosen_cert_serial", "tls_cipher",
    "tls_protocol_version", "tls_named_group", "domain_name", "alpn_fe_protocol",
    "alpn_be_protocol", "alpn_client_preference_list", "tls_connection_creation_time",
)
LEGACY_FIELD_COUNT = 21  # lines written before tls_connection_creation_time existed
ALPN_LIST_LIMIT = 256  # bytes; AWS truncates a longer alpn_client_preference_list
ABSENT = "-"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"  # ISO 8601, UTC, no zone, no fractional seconds
_TLS_VERSIONS = {"TLSv1": "tlsv10", "TLSv1.1": "tlsv11", "TLSv1.2": "tlsv12", "TLSv1.3": "tlsv13"}


class AccessLogParseError(ValueError):
    """A line that is not a version 2.0 NLB access-log entry; names the line and the field."""

    def __init__(self, line: str, field: str, reason: str) -> None:
        super().__init__(f"access log line {line!r}: {field}: {reason}")
        self.line = line
        self.field = field


class InvalidEntryError(ValueError):
    """An AccessLogEntry built with a value its field cannot hold."""


class LogObjectError(ValueError):
    """A log object body that is not gzip-compressed text."""


@dataclass(frozen=True)
class SocketAddress:
    """An IP address and port, written `ip:port` (IPv6 without brackets, split at the last
    colon, as the NLB writes client:port and destination:port)."""

    ip: str
    port: int

    def __post_init__(self) -> None:
        # A string, and one without spaces: ip_address also takes ints and scope ids.
        if not isinstance(self.ip, str) or not _is_ip_address(self.ip):
            raise InvalidEntryError(f"{self.ip!r} is not an IPv4 or IPv6 address")
        if not _is_int(self.port) or not 0 <= self.port <= 65535:
            raise InvalidEntryError(f"port {self.port!r} is not an integer in 0-65535")

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> SocketAddress:
        """`ip:port` -> SocketAddress; raises InvalidEntryError for anything else."""
        ip, sep, port = text.rpartition(":")
        if not sep or not _DIGITS.fullmatch(port):
            raise InvalidEntryError(f"{text!r} is not ip:port")
        return cls(ip, int(port))


@dataclass(frozen=True, kw_only=True)
class AccessLogEntry:
    """One TLS connection as the NLB logs it: the 22 version 2.0 fields, in order.

    Times are timezone-aware UTC datetimes (a naive one is taken as UTC); `format()` drops
    fractional seconds as AWS does. Durations are whole milliseconds. None stands for `-`.
    `domain_name` and the protocols of `alpn_client_preference_list` are the raw values the
    client sent, decoded byte for byte (latin-1); `format()` URL-encodes them.
    """

    type: str = "tls"
    version: str = "2.0"
    time: datetime
    elb: str
    listener: str
    client: SocketAddress
    destination: SocketAddress
    connection_time: int
    tls_handshake_time: int | None = None
    received_bytes: int
    sent_bytes: int
    incoming_tls_alert: int | None = None
    chosen_cert_arn: str | None = None
    chosen_cert_serial: str | None = None
    tls_cipher: str | None = None
    tls_protocol_version: str | None = None
    tls_named_group: str | None = None
    domain_name: str | None = None
    alpn_fe_protocol: str | None = None
    alpn_be_protocol: str | None = None
    alpn_client_preference_list: tuple[str, ...] | None = None
    tls_connection_creation_time: datetime | None = None

    def __post_init__(self) -> None:
        for name in FIELD_NAMES:
            value = _CODECS[name].check(name, getattr(self, name))
            object.__setattr__(self, name, value)

    def format(self) -> str:
        """The entry as one log line (no newline), byte for byte as AWS writes it."""
        return " ".join(_CODECS[name].format(getattr(self, name)) for name in FIELD_NAMES)


def parse_line(line: str) -> AccessLogEntry:
    """Parse one access-log line (a trailing newline is allowed).

    Accepts the 21-field lines written before 2023 (tls_connection_creation_time is then
    None) and ignores fields after the 22nd, as the NLB guide tells readers to. Raises
    AccessLogParseError naming the line and the first bad field.
    """
    text = line[:-1] if line.endswith("\n") else line
    text = text[:-1] if text.endswith("\r") else text
    tokens = text.split(" ")
    if len(tokens) < LEGACY_FIELD_COUNT:
        raise AccessLogParseError(
            line, "line", f"{len(tokens)} space-separated fields, expected 21, 22 or more"
        )
    values = {}
    for name, token in zip(FIELD_NAMES, tokens):
        try:
            values[name] = _CODECS[name].parse(token)
        except ValueError as error:
            position = FIELD_NAMES.index(name) + 1
            raise AccessLogParseError(line, f"field {position} ({name})", str(error)) from None
    return AccessLogEntry(**values)


def log_object_body(entries: Iterable[AccessLogEntry]) -> bytes:
    """The gzip body of a log object: one line per entry, each ending in a newline."""
    text = "".join(entry.format() + "\n" for entry in entries)
    return gzip.compress(text.encode("ascii"), mtime=0)


def read_log_object(body: bytes) -> list[AccessLogEntry]:
    """Gunzip a log object (several gzip members allowed) and parse every line.

    Raises LogObjectError when the body is not gzip text, AccessLogParseError for a bad line.
    """
    try:
        text = gzip.decompress(body).decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
        raise LogObjectError(
            f"log object body is not gzip-compressed UTF-8 text ({error}); "
            f"it starts with {body[:16]!r}"
        ) from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [parse_line(line) for line in lines]


def protocol_field(version: str) -> str:
    """OpenSSL's protocol name (`TLSv1.2`) -> the log's spelling (`tlsv12`)."""
    try:
        return _TLS_VERSIONS[version]
    except KeyError:
        raise InvalidEntryError(
            f"unknown TLS version {version!r}; accepted: {', '.join(_TLS_VERSIONS)}"
        ) from None


# ---- field codecs: how each field is checked, written and read ----------------------------

_DIGITS = re.compile(r"[0-9]+")
_TOKEN = re.compile(r"[!-~]+")  # printable ASCII without space: anything else splits a line


@functools.lru_cache(maxsize=4096)
def _is_ip_address(text: str) -> bool:
    # Cached: the data plane checks the client and listener address of every connection,
    # and a few addresses make most of them.
    if not _TOKEN.fullmatch(text):
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Codec:
    check_value: Callable[[object], object]  # normalises a present value or raises ValueError
    format_value: Callable[[object], str]
    parse_value: Callable[[str], object]
    optional: bool

    def check(self, name: str, value: object) -> object:
        if value is None:
            if self.optional:
                return None
            raise InvalidEntryError(f"{name} is required, got None")
        try:
            return self.check_value(value)
        except (TypeError, ValueError) as error:
            raise InvalidEntryError(f"{name}: {error}") from None

    def format(self, value: object) -> str:
        return ABSENT if value is None else self.format_value(value)

    def parse(self, token: str) -> object:
        if token == ABSENT and self.optional:
            return None
        if not token:
            raise ValueError("empty (two spaces in a row?)")
        return self.check_value(self.parse_value(token))


def _check_token(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value) or value == ABSENT:
        raise ValueError(f"{value!r} is not a non-empty printable ASCII word other than '-'")
    return value


def _check_count(value: object) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{value!r} is not a non-negative integer")
    return value


def _parse_count(token: str) -> int:
    if not _DIGITS.fullmatch(token):
        raise ValueError(f"{token!r} is not a non-negative decimal integer")
    return int(token)


def _check_time(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError(f"{value!r} is not a datetime")
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _parse_time(token: str) -> datetime:
    try:
        return datetime.strptime(token, _TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"{token!r} is not a time like 2018-12-20T02:59:40") from None


def _check_address(value: object) -> SocketAddress:
    if not isinstance(value, SocketAddress):
        raise ValueError(f"{value!r} is not a SocketAddress")
    return value


def _check_text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a non-empty string")
    return value


def _check_domain(value: object) -> str | None:
    # An empty server_name is no server_name: AWS writes `-` for it.
    return None if value == "" else _check_text(value)


def _url_encode(value: str) -> str:
    # The values are the client's bytes; latin-1 gives each byte back. The guide's example
    # writes `"http/1.1"` with its slash as sent, so `/` stays unencoded.
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raw = value.encode("utf-8")
    encoded = quote(raw, safe="/")
    return "%2D" if encoded == ABSENT else encoded  # a literal "-" must not read as absent


def _url_decode(token: str) -> str:
    return unquote_to_bytes(token).decode("latin-1")


def _check_alpn_list(value: object) -> tuple[str, ...] | None:
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        raise ValueError(f"{value!r} is not a sequence of protocol names")
    if not all(isinstance(protocol, str) for protocol in value):
        raise ValueError(f"{value!r} holds something other than strings")
    return tuple(value) or None


def _format_alpn_list(protocols: tuple[str, ...]) -> str:
    text = ",".join(f'"{_url_encode(protocol)}"' for protocol in protocols)
    return text.encode("ascii")[:ALPN_LIST_LIMIT].decode("ascii")


def _parse_alpn_list(token: str) -> tuple[str, ...]:
    # A list cut at 256 bytes may end inside its last protocol: that part has no closing
    # quote and is kept as far as it goes.
    cut = len(token.encode("utf-8")) >= ALPN_LIST_LIMIT
    parts = token.split(",")
    protocols = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if len(part) >= 2 and part.startswith('"') and part.endswith('"'):
            protocols.append(_url_decode(part[1:-1]))
        elif last and cut and (part.startswith('"') or part == ""):
            protocols.append(_url_decode(part[1:]))
        else:
            raise ValueError(f'{token!r} is not a list like "h2","http/1.1"')
    return tuple(protocols)


def _identity(value: object) -> object:
    return value


def _codec(check, parse=_identity, fmt=str, optional=True) -> _Codec:
    return _Codec(check, fmt, parse, optional)


_TOKEN_CODEC = _codec(_check_token)
_CODECS = {
    "type": _codec(_check_token, optional=False),
    "version": _codec(_check_token, optional=False),
    "time": _codec(_check_time, _parse_time, lambda t: t.strftime(_TIME_FORMAT), False),
    "elb": _codec(_check_token, optional=False),
    "listener": _codec(_check_token, optional=False),
    "client": _codec(_check_address, SocketAddress.parse, optional=False),
    "destination": _codec(_check_address, SocketAddress.parse, optional=False),
    "connection_time": _codec(_check_count, _parse_count, optional=False),
    "tls_handshake_time": _codec(_check_count, _parse_count),
    "received_bytes": _codec(_check_count, _parse_count, optional=False),
    "sent_bytes": _codec(_check_count, _parse_count, optional=False),
    "incoming_tls_alert": _codec(_check_count, _parse_count),
    "chosen_cert_arn": _TOKEN_CODEC,
    "chosen_cert_serial": _TOKEN_CODEC,
    "tls_cipher": _TOKEN_CODEC,
    "tls_protocol_version": _TOKEN_CODEC,
    "tls_named_group": _TOKEN_CODEC,
    "domain_name": _codec(_check_domain, _url_decode, _url_encode),
    "alpn_fe_protocol": _TOKEN_CODEC,
    "alpn_be_protocol": _TOKEN_CODEC,
    "alpn_client_preference_list": _codec(
        _check_alpn_list, _parse_alpn_list, _format_alpn_list
    ),
    "tls_connection_creation_time": _codec(
        _check_time, _parse_time, lambda t: t.strftime(_TIME_FORMAT)
    ),
}
