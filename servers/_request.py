"""Reading one HTTP/1.1 request from a connection, within fixed size limits."""

# The backends face whatever reaches a load balancer target, so every read is bounded:
# the request line, the header section, each chunk-size line and the body. A request
# that breaks a limit or the message syntax (RFC 9112) raises HttpError with the status
# to answer; the caller answers and closes the connection, because the rest of the
# stream can no longer be framed.
#
# An HttpError's detail and request_line hold the client's bytes as received (Latin-1
# decoded), never escaped: the error page and the access log each escape them once, with
# printable(). Escaping here as well would show a backslash as \x5c in the output.

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO, List, Optional, Tuple

__all__ = [
    "ClientGone",
    "HttpError",
    "Limits",
    "Request",
    "printable",
    "read_body",
    "read_head",
]

# 1*tchar (RFC 9110, 5.6.2): method names and header field names.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])\Z")
_DIGITS = re.compile(r"[0-9]+\Z")
_HEX = re.compile(rb"[0-9A-Fa-f]+\Z")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_BAD_VALUE = re.compile(r"[\x00\r\n]")
_UNPRINTABLE = re.compile(r'[\x00-\x1f\x7f-\xff"\\]')

# RFC 9112, 2.2: a server SHOULD ignore at least one empty line before a request line.
# A few are allowed (some clients send a stray CRLF after a POST body), a stream is not.
_MAX_EMPTY_LINES = 8
# A chunk-size line is a hex number and optional extensions; 4 KiB is far more than any
# client sends, and bounds what a hostile one can make the server buffer.
_MAX_CHUNK_LINE = 4096
# Twenty digits already exceed any body limit; longer sizes get 413 without conversion.
_MAX_SIZE_DIGITS = 20


@dataclass(frozen=True)
class Limits:
    """What a backend accepts from one client.

    max_request_line (8 KiB, as Apache and nginx allow) and max_header_bytes (64 KiB
    for all header lines together) are in bytes; max_body bounds a request body after
    chunked decoding; idle_timeout is how long a client may send nothing, in seconds.
    """

    max_request_line: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    max_body: int = 16 * 1024 * 1024
    idle_timeout: float = 30.0


@dataclass(frozen=True)
class Request:
    """A request's head as received; Latin-1 decoded, so every byte is kept as sent."""

    method: str
    target: str
    version: str
    headers: Tuple[Tuple[str, str], ...]
    keep_alive: bool
    content_length: Optional[int]
    chunked: bool
    expect_continue: bool

    @property
    def request_line(self) -> str:
        return f"{self.method} {self.target} {self.version}"

    def header(self, name: str) -> Optional[str]:
        """The field's value, repeats joined with ", " (RFC 9110, 5.3); else None."""
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return ", ".join(values) if values else None


class HttpError(Exception):
    """A request answered with an error status, after which the connection is closed.

    request_line is what was read of the request line, for the access log ("-": none).
    Both it and detail are unescaped text; whoever writes them out applies printable().
    """

    def __init__(self, status: int, detail: str, request_line: str = "-") -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.request_line = request_line


class ClientGone(Exception):
    """The client closed the connection in the middle of a request: no one to answer."""


def read_head(rfile: BinaryIO, limits: Limits) -> Optional[Request]:
    """Read a request line and header section; None if the client closed instead.

    Raises HttpError for a request to refuse, ClientGone when the stream ends inside the
    request, and whatever the socket raises on a timeout.
    """
    line = _read_request_line(rfile, limits)
    if line is None:
        return None
    method, target, version = _split_request_line(line)
    try:
        headers = _read_fields(rfile, limits.max_header_bytes, "header section")
        return _make_request(method, target, version, headers, limits)
    except HttpError as error:
        raise HttpError(error.status, error.detail, line) from None


def read_body(rfile: BinaryIO, request: Request, limits: Limits) -> bytes:
    """The request body, chunked coding removed; raises HttpError or ClientGone."""
    if request.chunked:
        try:
            return _read_chunked(rfile, limits.max_body)
        except HttpError as error:  # the access log names the request it refused
            raise HttpError(error.status, error.detail, request.request_line) from None
    if not request.content_length:
        return b""
    body = rfile.read(request.content_length)
    if len(body) < request.content_length:
        expected = request.content_length
        raise ClientGone(f"the body ended after {len(body)} of {expected} bytes")
    return body


def printable(text: str) -> str:
    """text with control, non-ASCII, quote and backslash characters as \\xhh escapes.

    Request lines and field values go into quoted access-log fields and error messages;
    a client must not be able to end the field or forge a log line.
    """
    return _UNPRINTABLE.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _read_request_line(rfile: BinaryIO, limits: Limits) -> Optional[str]:
    for _ in range(_MAX_EMPTY_LINES + 1):
        raw = rfile.readline(limits.max_request_line + 3)
        if not raw:
            return None
        line = raw.rstrip(b"\r\n")
        # A line within the limit and its CRLF take at most limit + 2 bytes. The raw
        # length decides, not the stripped one: a run of CRs strips to nothing.
        if len(raw) > limits.max_request_line + 2 or len(line) > limits.max_request_line:
            start = raw[:64].decode("latin-1")
            detail = f"the request line is longer than {limits.max_request_line} bytes"
            raise HttpError(414, detail, start + "...")
        if not raw.endswith(b"\n"):
            raise ClientGone("the stream ended inside the request line")
        if line:
            return line.decode("latin-1")
    detail = f"more than {_MAX_EMPTY_LINES} empty lines before the request line"
    raise HttpError(400, detail)


def _split_request_line(line: str) -> Tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        detail = "the request line is not METHOD SP TARGET SP HTTP/1.x"
        raise HttpError(400, detail, line)
    method, target, version = parts
    if not _TOKEN.match(method):
        raise HttpError(400, f"the method '{method}' is not a token", line)
    if _CONTROL.search(target):
        raise HttpError(400, "the request target contains control characters", line)
    matched = _VERSION.match(version)
    if not matched:
        detail = f"'{version}' is not an HTTP version; accepted: HTTP/1.0, HTTP/1.1"
        raise HttpError(400, detail, line)
    if matched.group(1) != "1":
        detail = f"{version} is not supported; HTTP/1.0 and HTTP/1.1 are"
        raise HttpError(505, detail, line)
    return method, target, version


def _read_fields(rfile: BinaryIO, budget: int, what: str) -> List[Tuple[str, str]]:
    """Header (or trailer) fields up to the empty line; their lines total <= budget."""
    fields: List[Tuple[str, str]] = []
    used = 0
    while True:
        # Two bytes beyond the budget: room for the CRLF ending a section that fills it.
        raw = rfile.readline(budget - used + 2)
        if not raw:
            raise ClientGone(f"the stream ended inside the {what}")
        if raw in (b"\r\n", b"\n"):
            return fields
        used += len(raw)
        if used > budget:
            raise HttpError(431, f"the {what} is longer than {budget} bytes in total")
        if not raw.endswith(b"\n"):
            raise ClientGone(f"the stream ended inside the {what}")
        fields.append(_parse_field(raw.rstrip(b"\r\n").decode("latin-1")))


def _parse_field(line: str) -> Tuple[str, str]:
    if line[:1] in (" ", "\t"):
        # RFC 9112, 5.2: obsolete line folding; a server may reject it with 400.
        raise HttpError(400, "obsolete line folding (a field line starting with space)")
    name, colon, value = line.partition(":")
    if not colon or not _TOKEN.match(name):
        raise HttpError(400, f"'{line[:64]}' is not a 'Name: value' line")
    value = value.strip(" \t")
    if _BAD_VALUE.search(value):
        raise HttpError(400, f"the {name} field value contains NUL or a bare CR")
    return name, value


def _make_request(
    method: str,
    target: str,
    version: str,
    headers: List[Tuple[str, str]],
    limits: Limits,
) -> Request:
    def values(name: str) -> List[str]:
        return [value for key, value in headers if key.lower() == name]

    connection = {token.strip().lower()
                  for value in values("connection") for token in value.split(",")}
    if version == "HTTP/1.1":
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection and "close" not in connection
    chunked = _is_chunked(values("transfer-encoding"))
    content_length = _content_length(values("content-length"), limits.max_body)
    if chunked and content_length is not None:
        # RFC 9112, 6.3: both at once is how requests are smuggled; refusing is allowed.
        raise HttpError(400, "both Transfer-Encoding and Content-Length are present")
    if method == "POST" and not chunked and content_length is None:
        detail = "a POST needs Content-Length or Transfer-Encoding: chunked"
        raise HttpError(411, detail)
    expect = [value.lower() for value in values("expect")]
    if expect and expect != ["100-continue"]:
        detail = f"Expect: {', '.join(expect)} is not supported; 100-continue is"
        raise HttpError(417, detail)
    return Request(
        method=method,
        target=target,
        version=version,
        headers=tuple(headers),
        keep_alive=keep_alive,
        content_length=content_length,
        chunked=chunked,
        expect_continue=bool(expect) and version == "HTTP/1.1",
    )


def _is_chunked(transfer_encodings: List[str]) -> bool:
    codings = [coding.strip().lower() for value in transfer_encodings
               for coding in value.split(",") if coding.strip()]
    if not codings:
        return False
    if codings != ["chunked"]:
        # RFC 9112, 6.1: a transfer coding the server does not understand gets 501.
        detail = f"Transfer-Encoding {', '.join(codings)} is not supported; chunked is"
        raise HttpError(501, detail)
    return True


def _content_length(values: List[str], max_body: int) -> Optional[int]:
    if not values:
        return None
    # RFC 9110, 8.6: "Content-Length: 5, 5" or a repeated identical field is one length.
    numbers = {item.strip() for value in values for item in value.split(",")}
    if len(numbers) != 1:
        shown = ", ".join(sorted(numbers))
        raise HttpError(400, f"conflicting Content-Length values: {shown}")
    text = numbers.pop()
    if not _DIGITS.match(text):
        detail = f"Content-Length '{text}' is not a decimal number of bytes"
        raise HttpError(400, detail)
    if len(text) > _MAX_SIZE_DIGITS or int(text) > max_body:
        detail = f"Content-Length {text} is over the body limit of {max_body} bytes"
        raise HttpError(413, detail)
    return int(text)


def _read_chunked(rfile: BinaryIO, max_body: int) -> bytes:
    """The data of a chunked body (RFC 9112, 7.1); trailer fields are read, dropped."""
    parts: List[bytes] = []
    total = 0
    while True:
        size = _read_chunk_size(rfile)
        if size == 0:
            _read_fields(rfile, _MAX_CHUNK_LINE, "trailer section")
            return b"".join(parts)
        total += size
        if total > max_body:
            detail = f"the chunked body is over the body limit of {max_body} bytes"
            raise HttpError(413, detail)
        data = rfile.read(size)
        if len(data) < size:
            raise ClientGone(f"a chunk ended after {len(data)} of {size} bytes")
        parts.append(data)
        if rfile.readline(3) not in (b"\r\n", b"\n"):
            raise HttpError(400, f"a chunk of {size} bytes is not followed by CRLF")


def _read_chunk_size(rfile: BinaryIO) -> int:
    raw = rfile.readline(_MAX_CHUNK_LINE + 1)
    if not raw:
        raise ClientGone("the stream ended before a chunk-size line")
    if not raw.endswith(b"\n"):
        if len(raw) <= _MAX_CHUNK_LINE:
            raise ClientGone("the stream ended inside a chunk-size line")
        detail = f"a chunk-size line is longer than {_MAX_CHUNK_LINE} bytes"
        raise HttpError(400, detail)
    digits = raw.split(b";", 1)[0].strip(b" \t\r\n")
    if not _HEX.match(digits):
        shown = digits[:32].decode("latin-1")
        raise HttpError(400, f"chunk size '{shown}' is not a hex number")
    if len(digits) > _MAX_SIZE_DIGITS:
        detail = f"a chunk size of {len(digits)} hex digits is over any body limit"
        raise HttpError(413, detail)
    return int(digits, 16)
