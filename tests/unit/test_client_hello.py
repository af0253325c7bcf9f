"""The ClientHello reader, on ClientHellos real clients sent to a loopback socket, and fuzzed."""

import random
import socket
import ssl
import struct
import threading

import pytest
from OpenSSL import SSL

from infra.sandbox.client_hello import (
    ClientHello,
    NeedMoreData,
    NotAClientHello,
    parse_client_hello,
)

pytestmark = pytest.mark.unit

TLS12, TLS13 = 0x0303, 0x0304
RENEGOTIATION_SCSV = 0x00FF  # OpenSSL appends it to a ClientHello that can do TLS 1.2


# ---- capturing real ClientHellos ------------------------------------------------------------


def capture(client) -> bytes:
    """Run CLIENT(port) against a socket on 127.0.0.1 and return the bytes it sent first, up
    to the end of its ClientHello (read until the parser is satisfied, then hang up)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    failures = []

    def run():
        try:
            client(port)
        except (OSError, ssl.SSLError, SSL.Error):
            pass  # the server hangs up mid-handshake on purpose
        except Exception as error:  # pragma: no cover - reported below
            failures.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    server.settimeout(5)
    connection, _ = server.accept()
    connection.settimeout(5)
    data = b""
    with connection, server:
        while True:
            chunk = connection.recv(65536)
            assert chunk, f"client closed after {len(data)} bytes without a whole ClientHello"
            data += chunk
            try:
                parse_client_hello(data)
                break
            except NeedMoreData:
                continue
    thread.join(5)
    assert not failures, f"client failed: {failures}"
    return data


def python_client(context: ssl.SSLContext, server_name: str | None):
    def connect(port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            context.wrap_socket(sock, server_hostname=server_name)

    return connect


def client_context(alpn=None, maximum=None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if maximum:
        context.maximum_version = maximum
    return context


def pyopenssl_client(server_name: bytes, alpn: list[bytes]):
    def connect(port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            connection = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), sock)
            connection.set_tlsext_host_name(server_name)
            connection.set_alpn_protos(alpn)
            connection.set_connect_state()
            connection.do_handshake()

    return connect


LONG_ALPN = tuple(f"{n:03d}-" + "x" * 250 for n in range(100))  # > 2^14 bytes: two records


@pytest.fixture(scope="module")
def hellos() -> dict[str, bytes]:
    """Raw first flights of real clients, captured once for the module."""
    return {
        "python": capture(python_client(client_context(("h2", "http/1.1")), "www.example.test")),
        "python_tls12": capture(
            python_client(client_context(("http/1.1",), ssl.TLSVersion.TLSv1_2), "a.test")
        ),
        "python_bare": capture(python_client(client_context(), None)),
        "pyopenssl": capture(pyopenssl_client(b"api.example.test", [b"http/1.1", b"h2"])),
        "python_long": capture(python_client(client_context(LONG_ALPN), "long.test")),
    }


# ---- what real clients send -----------------------------------------------------------------


def test_python_client_hello_has_sni_alpn_versions_and_suites(hellos):
    hello = parse_client_hello(hellos["python"])
    offered = [c["id"] & 0xFFFF for c in client_context().get_ciphers()]
    assert hello.server_name == "www.example.test"
    assert hello.alpn_protocols == ("h2", "http/1.1")
    assert hello.legacy_version == TLS12, f"got {hello.legacy_version:#06x}"
    assert hello.supported_versions == (TLS13, TLS12), f"got {hello.supported_versions}"
    assert hello.max_version == TLS13
    assert list(hello.cipher_suites) == offered + [RENEGOTIATION_SCSV], (
        f"expected the context's suites {offered} + SCSV, got {list(hello.cipher_suites)}"
    )
    assert hello.length == len(hellos["python"])


def test_tls12_only_client_sends_no_supported_versions(hellos):
    hello = parse_client_hello(hellos["python_tls12"])
    assert hello.supported_versions == () and hello.max_version == TLS12
    assert hello.server_name == "a.test" and hello.alpn_protocols == ("http/1.1",)
    assert not any(0x1301 <= suite <= 0x1305 for suite in hello.cipher_suites)


def test_client_without_sni_or_alpn(hellos):
    hello = parse_client_hello(hellos["python_bare"])
    assert hello.server_name is None and hello.alpn_protocols == ()
    assert 0 not in hello.extension_types and 16 not in hello.extension_types


def test_pyopenssl_client_hello_keeps_alpn_order(hellos):
    hello = parse_client_hello(hellos["pyopenssl"])
    assert hello.server_name == "api.example.test"
    assert hello.alpn_protocols == ("http/1.1", "h2")
    assert TLS13 in hello.supported_versions


def test_client_hello_spanning_two_records(hellos):
    data = hellos["python_long"]
    first_size = struct.unpack("!H", data[3:5])[0]
    assert first_size == 2**14 and data[5 + first_size] == 22, "expected a second record"
    hello = parse_client_hello(data)
    assert hello.alpn_protocols == LONG_ALPN and hello.server_name == "long.test"


@pytest.mark.parametrize("size", [1, 7, 100, 1000])
def test_refragmented_client_hello_reads_the_same(hellos, size):
    data = hellos["pyopenssl"]
    original = parse_client_hello(data)
    message = b"".join(_record_payloads(data))
    refragmented = b"".join(
        _record(message[i : i + size]) for i in range(0, len(message), size)
    )
    hello = parse_client_hello(refragmented)
    assert _without_length(hello) == _without_length(original)
    assert hello.length == len(refragmented)


def test_bytes_after_the_client_hello_are_ignored(hellos):
    data = hellos["python"]
    hello = parse_client_hello(data + b"\x14\x03\x03\x00\x01\x01" + b"junk")
    assert hello.length == len(data) and hello.server_name == "www.example.test"


def test_every_proper_prefix_needs_more_data(hellos):
    for name in ("python", "python_tls12", "pyopenssl"):
        data = hellos[name]
        for cut in range(len(data)):
            with pytest.raises(NeedMoreData):
                parse_client_hello(data[:cut])
                pytest.fail(f"{name}: {cut} of {len(data)} bytes parsed as complete")


def test_prefixes_of_a_two_record_hello_need_more_data(hellos):
    data = hellos["python_long"]
    for cut in list(range(0, 40)) + list(range(2**14 - 5, 2**14 + 30)) + [len(data) - 1]:
        with pytest.raises(NeedMoreData):
            parse_client_hello(data[:cut])


# ---- what is not a ClientHello --------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "content type 71"),
        (b"\x15\x03\x03\x00\x02\x02\x28", "content type 21"),  # an alert record
        (b"\x80\x2e\x01\x00\x02", "content type 128"),  # SSLv2-format hello
        (b"\x16\x02", "major byte 2"),
        (b"\x16\x03\x09", "3.9"),
        (b"\x16\x03\x01\x00\x00", "record length 0"),
        (b"\x16\x03\x01\x40\x01", "record length 16385"),
        (b"\x16\x03\x03\x00\x04\x02\x00\x00\x46", "handshake type 2"),  # a ServerHello
        (b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "more than"),
        (b"\x16", None),
    ],
)
def test_garbage_is_refused_early(data, reason):
    if reason is None:
        with pytest.raises(NeedMoreData):
            parse_client_hello(data)
        return
    with pytest.raises(NotAClientHello) as caught:
        parse_client_hello(data + b"\x00" * 3)
    assert reason in str(caught.value), f"expected {reason!r} in {caught.value}"


def _client_hello(
    *, version=TLS12, session_id=b"", suites=b"\x13\x01\xc0\x2f", compression=b"\x00",
    extensions=None, raw_extensions=None, tail=b"",
) -> bytes:
    """A ClientHello built from its parts (RFC 8446 4.1.2), so single fields can be broken."""
    if raw_extensions is None:
        raw_extensions = b"".join(
            struct.pack("!HH", kind, len(body)) + body for kind, body in (extensions or [])
        )
    body = (
        struct.pack("!H", version) + bytes(32)
        + bytes([len(session_id)]) + session_id
        + struct.pack("!H", len(suites)) + suites
        + bytes([len(compression)]) + compression
        + (struct.pack("!H", len(raw_extensions)) + raw_extensions if extensions is not None
           or raw_extensions else b"")
        + tail
    )
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return _record(message)


def _sni(*names: tuple[int, bytes]) -> tuple[int, bytes]:
    entries = b"".join(bytes([kind]) + struct.pack("!H", len(n)) + n for kind, n in names)
    return 0, struct.pack("!H", len(entries)) + entries


def _alpn(*protocols: bytes) -> tuple[int, bytes]:
    entries = b"".join(bytes([len(p)]) + p for p in protocols)
    return 16, struct.pack("!H", len(entries)) + entries


def test_built_client_hello_reads_back():
    data = _client_hello(extensions=[_sni((0, b"b.test")), _alpn(b"h2", b"\xe9")])
    hello = parse_client_hello(data)
    assert hello == ClientHello(
        server_name="b.test", alpn_protocols=("h2", "\xe9"), legacy_version=TLS12,
        supported_versions=(), cipher_suites=(0x1301, 0xC02F), extension_types=(0, 16),
        length=len(data),
    )


def test_client_hello_without_extensions_is_accepted():
    hello = parse_client_hello(_client_hello())
    assert hello.server_name is None and hello.extension_types == ()


def test_sni_takes_the_first_host_name_entry():
    data = _client_hello(extensions=[_sni((7, b"other"), (0, b"first.test"), (0, b"x.test"))])
    assert parse_client_hello(data).server_name == "first.test"


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ({"version": 0x0200}, "ClientHello version"),
        ({"session_id": bytes(33)}, "session id"),
        ({"suites": b"\x13\x01\xc0"}, "odd"),
        ({"suites": b""}, "cipher suites length 0"),
        ({"compression": b""}, "compression methods length 0"),
        ({"extensions": [_alpn(b"h2"), _alpn(b"h2")]}, "appears twice"),
        ({"extensions": [_alpn(b"h2", b"")]}, "ALPN protocol length 0"),
        ({"extensions": [(16, b"\x00\x00")]}, "ALPN protocol list length 0"),
        ({"extensions": [_sni((0, b""))]}, "server name length 0"),
        ({"extensions": [(0, b"\x00\x05\x00\x00\x01a")]}, "server name list length 5"),
        ({"extensions": [(43, b"\x03\x03\x04\x03")]}, "supported_versions"),
        ({"raw_extensions": b"\x00\x10\x00\x09\x00"}, "extension 16 length 9"),
        ({"extensions": [], "tail": b"\x00"}, "after the extensions"),
    ],
)
def test_broken_fields_are_refused(parts, reason):
    with pytest.raises(NotAClientHello) as caught:
        parse_client_hello(_client_hello(**parts))
    assert reason in str(caught.value), f"expected {reason!r} in {caught.value}"


# ---- fuzzing: only the two documented exceptions, whatever the bytes -------------------------


def _parse_anything(data: bytes):
    try:
        return parse_client_hello(data)
    except (NeedMoreData, NotAClientHello):
        return None
    except Exception as error:  # the reader must never raise anything else
        pytest.fail(f"{type(error).__name__}: {error} on input {data[:64].hex()}...")


def test_random_bytes_raise_only_the_documented_errors():
    rng = random.Random(20240501)
    for round_ in range(4000):
        body = rng.randbytes(rng.randrange(0, 300))
        if round_ % 4 == 1:  # behind a valid record header
            body = _record(b"\x01" + body)
        elif round_ % 4 == 2:  # behind valid headers, version and random: the body is read
            body = b"\x03\x03" + bytes(32) + body
            body = _record(b"\x01" + len(body).to_bytes(3, "big") + body)
        elif round_ % 4 == 3:  # a well-formed hello whose extensions hold garbage
            extensions = [
                (rng.choice([0, 16, 43, rng.randrange(2**16)]), rng.randbytes(rng.randrange(9)))
                for _ in range(rng.randrange(4))
            ]
            body = _client_hello(extensions=extensions)
        _parse_anything(body)


def test_mutated_real_client_hellos_raise_only_the_documented_errors(hellos):
    rng = random.Random(7)
    samples = [hellos["python"], hellos["python_tls12"], hellos["pyopenssl"]]
    parsed = 0
    for _ in range(3000):
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = len(data) if rng.random() < 0.5 else rng.randrange(len(data))
        parsed += _parse_anything(bytes(data[:cut])) is not None
    assert parsed > 0, "no mutation parsed at all: the mutations never reached the body"


def _record(fragment: bytes) -> bytes:
    return b"\x16\x03\x01" + struct.pack("!H", len(fragment)) + fragment


def _record_payloads(data: bytes):
    offset = 0
    while offset < len(data):
        size = struct.unpack("!H", data[offset + 3 : offset + 5])[0]
        yield data[offset + 5 : offset + 5 + size]
        offset += 5 + size


def _without_length(hello: ClientHello) -> tuple:
    return (hello.server_name, hello.alpn_protocols, hello.legacy_version,
            hello.supported_versions, hello.cipher_suites, hello.extension_types)
