"""Unit tests of the TLS backend, started as `python -m servers.https_server`."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from tests.unit.test_http_server import (
    REPO_ROOT,
    ServerProcess,
    parse_response,
    request_bytes,
    start_server,
    stop_cleanly,
)

pytestmark = pytest.mark.unit

SERVER_NAME = "backend.example"
IDLE_TIMEOUT = 1.0
VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
# The ciphers of ELBSecurityPolicy-2016-08 (TLS13-1-0-2021-06 has the same below TLS
# 1.3), split by the key that authenticates them and the versions that can carry them.
SHA1_SUITES = {
    "RSA": ("ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA", "AES128-SHA", "AES256-SHA"),
    "EC": ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA"),
}
TLS12_SUITES = {
    "RSA": ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA256",
            "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-SHA384",
            "AES128-GCM-SHA256", "AES128-SHA256", "AES256-GCM-SHA384", "AES256-SHA256"),
    "EC": ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-SHA256",
           "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES256-SHA384"),
}
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256")
POLICY_HANDSHAKES = (
    [(key, version, cipher) for key in ("RSA", "EC") for cipher in SHA1_SUITES[key]
     for version in ("TLSv1", "TLSv1.1", "TLSv1.2")]
    + [(key, "TLSv1.2", cipher) for key in ("RSA", "EC")
       for cipher in TLS12_SUITES[key]]
)


@dataclass(frozen=True)
class Pki:
    """Test files: root -> intermediate -> RSA and EC leaves, and keys of neither."""

    root: Path
    intermediate: Path
    rsa_leaf: Path
    rsa_key: Path
    ec_leaf: Path
    ec_key: Path
    other_rsa_key: Path
    other_ec_key: Path
    directory: Path


@dataclass(frozen=True)
class ClientView:
    """What the client negotiated, as its own ssl module reports it."""

    version: str
    cipher: str
    peer_certificate: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool):
    now = datetime.datetime.now(datetime.timezone.utc)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(_name(issuer))
        .public_key(public_key).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca, 1 if ca else None), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), False)
    )
    if ca:
        usage = x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False,
        )
        builder = builder.add_extension(usage, True)
    else:
        names = x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)])
        purposes = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
        builder = builder.add_extension(names, False).add_extension(purposes, False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_key(path: Path, key, encryption=serialization.NoEncryption(),
               form=serialization.PrivateFormat.PKCS8) -> Path:
    data = key.private_bytes(serialization.Encoding.PEM, form, encryption)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    return path


def _write_cert(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """Certificates and keys made with cryptography, keys written with mode 0600."""
    directory = tmp_path_factory.mktemp("pki")
    root_key = ec.generate_private_key(ec.SECP256R1())
    middle_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate("Test Root", root_key, "Test Root", root_key, ca=True)
    middle = _certificate("Test Intermediate", middle_key, "Test Root", root_key,
                          ca=True)

    def leaf(key):
        return _certificate(SERVER_NAME, key, "Test Intermediate", middle_key, ca=False)

    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Pki(
        root=_write_cert(directory / "root.pem", root),
        intermediate=_write_cert(directory / "intermediate.pem", middle),
        rsa_leaf=_write_cert(directory / "rsa-leaf.pem", leaf(rsa_key)),
        rsa_key=_write_key(directory / "rsa.key", rsa_key),
        ec_leaf=_write_cert(directory / "ec-leaf.pem", leaf(ec_key)),
        ec_key=_write_key(directory / "ec.key", ec_key,
                          form=serialization.PrivateFormat.TraditionalOpenSSL),
        other_rsa_key=_write_key(directory / "other-rsa.key", other_rsa),
        other_ec_key=_write_key(directory / "other-ec.key",
                                ec.generate_private_key(ec.SECP384R1())),
        directory=directory,
    )


def _tls_server(cert: Path, key: Path, *extra: str):
    return start_server("servers.https_server", "-p", "0",
                        "--idle-timeout", str(IDLE_TIMEOUT),
                        "--cert", str(cert), "--key", str(key), *extra)


@pytest.fixture(scope="module")
def server(pki):
    """The TLS backend with the RSA leaf and its intermediate."""
    process = _tls_server(pki.rsa_leaf, pki.rsa_key, "--chain", str(pki.intermediate))
    yield process
    stop_cleanly(process)


@pytest.fixture(scope="module")
def ec_server(pki):
    """The TLS backend with the EC leaf (a SEC1 "EC PRIVATE KEY"), no chain."""
    process = _tls_server(pki.ec_leaf, pki.ec_key)
    yield process
    stop_cleanly(process)


def client_context(version: Optional[str] = None, cipher: str = "ALL",
                   ca: Optional[Path] = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cafile=str(ca))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if version is not None:
            context.minimum_version = context.maximum_version = VERSIONS[version]
        else:
            context.minimum_version = ssl.TLSVersion.TLSv1
    # OpenSSL 3 offers TLS 1.0/1.1 and SHA-1 suites only at security level 0.
    context.set_ciphers(f"{cipher}:@SECLEVEL=0")
    return context


def tls_get(port: int, path: str = "/", context: Optional[ssl.SSLContext] = None,
            server_name: Optional[str] = None, raw: Optional[bytes] = None
            ) -> Tuple[ClientView, int, dict, bytes]:
    """One request over TLS: the client's view, status, JSON document (or {}), body."""
    data = raw or request_bytes(f"GET {path}", "Accept: application/json")
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    context = context or client_context()
    with context.wrap_socket(sock, server_hostname=server_name) as tls:
        view = ClientView(tls.version(), tls.cipher()[0],
                          tls.getpeercert(binary_form=True))
        tls.sendall(data)
        answer = _read_tls(tls)
    status, headers, body = parse_response(answer)
    is_json = headers.get("content-type") == "application/json"
    return view, status, json.loads(body) if is_json else {}, body


def _read_tls(tls: ssl.SSLSocket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = tls.recv(65536)
        except ssl.SSLEOFError:  # a close without close_notify; framing is by length
            chunk = b""
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def spki_sha256(source) -> str:
    """SHA-256 of the SubjectPublicKeyInfo DER of a PEM file or a public key."""
    key = source
    if isinstance(source, Path):
        data = source.read_bytes()
        if b"CERTIFICATE" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_private_key(data, None).public_key()
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def run_https(*args: str, env=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "servers.https_server", "-l", "127.0.0.1",
               "-p", "0", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=30, env=env, stdin=subprocess.DEVNULL)


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2, one error message holding every fragment, no traceback."""
    stderr = result.stderr
    status = result.returncode
    assert status == 2, f"expected exit 2, got {status}:\n{stderr}"
    assert stderr.count("https_server: error:") == 1, stderr
    assert "Traceback" not in stderr and "listening on" not in stderr, stderr
    for fragment in fragments:
        assert fragment in stderr, f"expected {fragment!r} in:\n{stderr}"


def assert_serves_tls(port: int) -> None:
    _, status, document, _ = tls_get(port, "/still-serving")
    assert status == 200 and document["path"] == "/still-serving", (status, document)


def test_get_over_tls_returns_page_for_tls(server):
    _, status, _, body = tls_get(server.port, raw=request_bytes("GET /page"))
    page = body.decode("utf-8")
    assert status == 200
    assert "<title>HTTPS server for TLS</title>" in page, page
    assert "<h1>HTTPS server for TLS</h1>" in page, page
    assert f"<dd>127.0.0.1:{server.port}</dd>" in page, page
    assert "<dd>/page</dd>" in page, page


def test_json_reports_negotiated_version_cipher_and_sni(server):
    view, status, document, _ = tls_get(server.port, "/tls", server_name=SERVER_NAME)
    expected = {"version": view.version, "cipher": view.cipher,
                "server_name": SERVER_NAME, "alpn_protocol": None}
    assert status == 200 and document["server"] == "https"
    assert document["tls"] == expected, f"expected {expected}, got {document['tls']}"


def test_json_reports_no_server_name_without_sni(server):
    # Python sends no SNI when no server_hostname is given.
    _, _, document, _ = tls_get(server.port, "/no-sni")
    assert document["tls"]["server_name"] is None, document["tls"]


def test_alpn_http11_is_agreed_and_h2_only_is_not_refused(server):
    offers = {("h2", "http/1.1"): "http/1.1", ("h2",): None}
    for offer, expected in offers.items():
        context = client_context()
        context.set_alpn_protocols(list(offer))
        _, status, document, _ = tls_get(server.port, "/alpn", context=context)
        got = document["tls"]["alpn_protocol"]
        assert status == 200 and got == expected, f"{offer}: expected {expected}: {got}"


def test_chain_is_sent_so_clients_trusting_only_the_root_verify(server, pki):
    context = client_context(ca=pki.root)
    view, status, _, _ = tls_get(server.port, "/verified", context=context,
                                 server_name=SERVER_NAME)
    assert status == 200 and view.version, view


def test_without_chain_clients_trusting_only_the_root_fail(pki):
    process = _tls_server(pki.rsa_leaf, pki.rsa_key)
    try:
        context = client_context(ca=pki.root)
        with pytest.raises(ssl.SSLCertVerificationError, match="local issuer"):
            tls_get(process.port, context=context, server_name=SERVER_NAME)
    finally:
        stop_cleanly(process)


@pytest.mark.parametrize("version", list(VERSIONS))
def test_every_tls_version_from_1_0_to_1_3_is_accepted(server, version):
    context = client_context(version)
    view, status, document, _ = tls_get(server.port, "/v", context=context)
    assert status == 200 and view.version == version, f"expected {version}, got {view}"
    assert document["tls"]["version"] == version, document["tls"]


@pytest.mark.parametrize("key, version, cipher", POLICY_HANDSHAKES)
def test_backend_policy_ciphers_are_accepted(server, ec_server, key, version, cipher):
    port = server.port if key == "RSA" else ec_server.port
    context = client_context(version, cipher)
    view, status, document, _ = tls_get(port, "/c", context=context)
    negotiated = (view.version, view.cipher)
    assert negotiated == (version, cipher), f"expected {version, cipher}: {negotiated}"
    reported = (document["tls"]["version"], document["tls"]["cipher"])
    assert reported == negotiated, f"server reported {reported}, client {negotiated}"


def _pyopenssl_get(port: int, suite: str) -> Tuple[str, bytes]:
    """A TLS 1.3 GET offering one suite: the cipher agreed and the raw answer."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.set_tls13_ciphersuites(suite.encode())
    sock = socket.create_connection(("127.0.0.1", port), 5)
    # pyOpenSSL wants a blocking socket; SO_RCVTIMEO still bounds each read to 5 s.
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))
    connection = SSL.Connection(context, sock)
    connection.set_connect_state()
    connection.set_tlsext_host_name(SERVER_NAME.encode())
    try:
        connection.do_handshake()
        connection.sendall(request_bytes("GET /tls13", "Accept: application/json"))
        data = b""
        while True:
            data += connection.recv(65536)
    except (SSL.ZeroReturnError, SSL.SysCallError):
        return connection.get_cipher_name(), data
    finally:
        connection.close()


@pytest.mark.parametrize("key", ["RSA", "EC"])
@pytest.mark.parametrize("suite", TLS13_SUITES)
def test_tls13_suites_are_accepted(server, ec_server, key, suite):
    # Python's ssl cannot choose TLS 1.3 suites on a client before 3.13; pyOpenSSL can.
    port = server.port if key == "RSA" else ec_server.port
    cipher, data = _pyopenssl_get(port, suite)
    tls = json.loads(parse_response(data)[2])["tls"]
    assert cipher == suite, f"expected {suite}, got {cipher}"
    assert (tls["version"], tls["cipher"]) == ("TLSv1.3", suite), tls
    assert tls["server_name"] == SERVER_NAME, tls


def test_hostile_input_is_refused_over_tls_too(server):
    long_line = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"
    _, status, _, _ = tls_get(server.port, raw=long_line)
    assert status == 414, f"expected 414 for a 9000-byte request line, got {status}"
    chunked = request_bytes("POST /chunked", "Accept: application/json",
                            "Transfer-Encoding: chunked",
                            body=b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
    _, status, document, _ = tls_get(server.port, raw=chunked)
    expected = hashlib.sha256(b"abcdef").hexdigest()
    assert status == 200 and document["body_sha256"] == expected, (status, document)
    assert_serves_tls(server.port)


def test_connections_without_handshake_are_closed_quietly(server):
    for _ in range(5):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    # Plain HTTP to the TLS port and a malformed ClientHello get an alert or a close.
    for junk in (request_bytes("GET /"), b"\x16\x03\x01\x00\x05hello"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(junk)
            try:
                sock.recv(1024)
            except ConnectionResetError:
                pass
    # Half a record header, then gone.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"\x16\x03")
    assert_serves_tls(server.port)
    server.wait_for(r'"GET /still-serving HTTP/1\.1" 200')
    assert "Traceback" not in server.stderr, server.stderr


def test_client_that_never_starts_a_handshake_is_disconnected(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        started = time.monotonic()
        data = sock.recv(1024)
        waited = time.monotonic() - started
    assert data == b"", f"expected a quiet close, got {data!r}"
    assert IDLE_TIMEOUT * 0.8 <= waited <= IDLE_TIMEOUT + 3, f"after {waited:.2f} s"
    assert_serves_tls(server.port)


def test_self_signed_certificate_is_made_when_no_files_are_given(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    process = start_server("servers.https_server", "-p", "0",
                           env=dict(os.environ, TMPDIR=str(scratch)))
    try:
        first = process.stderr.splitlines()[0]
        view, status, document, _ = tls_get(process.port, "/self-signed")
        leftovers = list(scratch.iterdir())
    finally:
        stop_cleanly(process)
    certificate = x509.load_der_x509_certificate(view.peer_certificate)
    assert "listening on" in first and "self-signed" in first, first
    assert status == 200 and document["server"] == "https"
    assert certificate.issuer == certificate.subject, certificate.subject
    assert spki_sha256(certificate.public_key()) in first, first
    assert leftovers == [], f"expected the key's directory removed, found {leftovers}"


def test_missing_openssl_for_self_signed_certificate_exits_2(tmp_path):
    result = run_https(env=dict(os.environ, PATH=str(tmp_path)))
    assert_refused(result, "no openssl command on PATH", "--cert and --key")


@pytest.mark.parametrize("other", ["other_rsa_key", "other_ec_key", "ec_key"])
def test_mismatched_key_exits_2_with_both_fingerprints(pki, other):
    key = getattr(pki, other)
    result = run_https("--cert", str(pki.rsa_leaf), "--key", str(key))
    cert_print, key_print = spki_sha256(pki.rsa_leaf), spki_sha256(key)
    assert_refused(result, "do not belong together", cert_print, key_print,
                   f"openssl x509 -in {pki.rsa_leaf}", f"openssl pkey -in {key}")
    # The commands the message suggests print the same two fingerprints.
    commands = [line.strip() for line in result.stderr.splitlines()
                if line.strip().startswith("openssl")]
    printed = [subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                              timeout=20).stdout for command in commands]
    assert len(printed) == 2, commands
    assert cert_print in printed[0] and key_print in printed[1], (commands, printed)


@pytest.mark.parametrize("form_name", ["PKCS8", "TraditionalOpenSSL"])
def test_encrypted_key_exits_2_without_prompting(pki, form_name):
    form = getattr(serialization.PrivateFormat, form_name)
    key = serialization.load_pem_private_key(pki.rsa_key.read_bytes(), None)
    path = _write_key(pki.directory / f"encrypted-{form_name}.key", key,
                      serialization.BestAvailableEncryption(b"secret"), form)
    result = run_https("--cert", str(pki.rsa_leaf), "--key", str(path))
    assert_refused(result, f"{path} is encrypted", f"openssl pkey -in {path}")


@pytest.mark.parametrize("flag", ["--cert", "--key", "--chain"])
def test_missing_file_exits_2_naming_it(pki, flag):
    files = {"--cert": str(pki.rsa_leaf), "--key": str(pki.rsa_key),
             "--chain": str(pki.intermediate)}
    files[flag] = str(pki.directory / "does-not-exist.pem")
    result = run_https(*[item for pair in files.items() for item in pair])
    assert_refused(result, f"{files[flag]} does not exist")


def test_files_that_are_not_pem_exit_2_naming_them(pki):
    der = pki.directory / "leaf.der"
    leaf = x509.load_pem_x509_certificate(pki.rsa_leaf.read_bytes())
    der.write_bytes(leaf.public_bytes(serialization.Encoding.DER))
    text = pki.directory / "notes.txt"
    text.write_text("not a certificate\n")
    cert, key = str(pki.rsa_leaf), str(pki.rsa_key)
    cases = [
        (["--cert", str(der), "--key", key], [f"{der} is not PEM", "-inform DER"]),
        (["--cert", cert, "--key", str(text)], [f"{text} is not PEM"]),
        (["--cert", key, "--key", key], [f"{key} holds no PEM block", "CERTIFICATE"]),
        (["--cert", cert, "--key", key, "--chain", key],
         [f"{key} holds no PEM CERTIFICATE block"]),
    ]
    for args, fragments in cases:
        assert_refused(run_https(*args), *fragments)


@pytest.mark.parametrize("flag", ["--cert", "--key", "--chain"])
def test_certificate_files_that_are_not_regular_files_exit_2(pki, tmp_path, flag):
    # A named pipe without a writer: opened for reading without O_NONBLOCK, it would
    # hang start-up for ever.
    pipe = tmp_path / "pipe.pem"
    os.mkfifo(pipe)
    files = {"--cert": str(pki.rsa_leaf), "--key": str(pki.rsa_key),
             "--chain": str(pki.intermediate)}
    for special, kind in ((pipe, "a named pipe"), (Path("/dev/null"), "a character device")):
        files[flag] = str(special)
        result = run_https(*[item for pair in files.items() for item in pair])
        assert_refused(result, f"{special} is not a regular file ({kind})")


def test_certificate_file_over_1_mib_exits_2_naming_the_limit(pki, tmp_path):
    large = tmp_path / "large.pem"
    # A PEM certificate followed by more than 1 MiB: read whole, it would be accepted.
    large.write_bytes(pki.rsa_leaf.read_bytes() + b"#" * (1024 * 1024))
    result = run_https("--cert", str(large), "--key", str(pki.rsa_key))
    assert_refused(result, f"{large} is larger than 1048576 bytes")


def _fake_openssl(directory: Path) -> Path:
    """An `openssl` that writes its PID to directory/openssl.pid, then sleeps 300 s."""
    sleep = shutil.which("sleep")
    assert sleep is not None, "the test needs a sleep command"
    script = directory / "openssl"
    script.write_text(f"#!/bin/sh\necho $$ > {directory / 'openssl.pid'}\n"
                      f"exec {sleep} 300\n")
    script.chmod(0o755)
    return directory / "openssl.pid"


def test_sigterm_while_making_the_certificate_exits_0_at_once(tmp_path):
    pid_file = _fake_openssl(tmp_path)
    process = ServerProcess("servers.https_server", "-l", "127.0.0.1", "-p", "0",
                            env=dict(os.environ, PATH=str(tmp_path)))
    openssl_pid = None
    try:
        deadline = time.monotonic() + 30
        while openssl_pid is None and time.monotonic() < deadline:
            text = pid_file.read_text() if pid_file.exists() else ""
            openssl_pid = int(text) if text.strip() else None
            time.sleep(0.05)
        assert openssl_pid is not None, f"openssl was not started:\n{process.stderr}"
        # Long before the fake openssl ends (300 s) or the server gives up on it (60 s).
        status = process.stop(signal.SIGTERM, timeout=30)
        assert status == 0, f"expected exit 0, got {status}:\n{process.stderr}"
        assert "stopping on SIGTERM during start-up" in process.stderr, process.stderr
        assert "Traceback" not in process.stderr, process.stderr
        with pytest.raises(ProcessLookupError):
            os.kill(openssl_pid, 0)  # the server killed and reaped its openssl
    finally:
        if process.process.poll() is None:
            process.stop(signal.SIGKILL)
        if openssl_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(openssl_pid, signal.SIGKILL)


@pytest.mark.parametrize("args, fragment", [
    (["--cert", "a.pem"], "--cert and --key go together"),
    (["--key", "a.key"], "--cert and --key go together"),
    (["--chain", "c.pem"], "--chain needs --cert and --key"),
])
def test_incomplete_certificate_options_are_usage_errors(args, fragment):
    result = run_https(*args)
    assert result.returncode == 2 and fragment in result.stderr, result.stderr


def test_sigint_stops_tls_server_with_status_0(pki):
    process = _tls_server(pki.ec_leaf, pki.ec_key)
    assert_serves_tls(process.port)
    status = process.stop(signal.SIGINT)
    assert status == 0, f"expected 0 on SIGINT, got {status}:\n{process.stderr}"
    assert "Traceback" not in process.stderr, process.stderr


TLS_IN_PROCESS_SCRIPT = """
import json, socket, ssl, sys
from servers.https_server import make_server, tls_context
context = tls_context()
context.load_cert_chain(sys.argv[1], sys.argv[2])
server = make_server("127.0.0.1", 0, ssl_context=context)
server.start()
client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client.load_verify_locations(sys.argv[3])
raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
with client.wrap_socket(raw, server_hostname="backend.example") as tls:
    tls.sendall(b"GET /own-context HTTP/1.1\\r\\nHost: x\\r\\n"
                b"Accept: application/json\\r\\nConnection: close\\r\\n\\r\\n")
    data = b""
    while True:
        try:
            chunk = tls.recv(65536)
        except ssl.SSLEOFError:
            chunk = b""
        if not chunk:
            break
        data += chunk
server.stop()
print(data.partition(b"\\r\\n\\r\\n")[2].decode())
"""


def test_make_server_with_callers_context_records_sni(pki):
    # The chain goes with the leaf here, so a client trusting only the root verifies.
    fullchain = pki.directory / "fullchain.pem"
    fullchain.write_bytes(pki.rsa_leaf.read_bytes() + pki.intermediate.read_bytes())
    command = [sys.executable, "-W", "error", "-c", TLS_IN_PROCESS_SCRIPT,
               str(fullchain), str(pki.rsa_key), str(pki.root)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["path"] == "/own-context", document
    assert document["tls"]["server_name"] == SERVER_NAME, document["tls"]


def test_non_ascii_sni_is_refused_with_one_log_line_and_no_traceback(server):
    # CPython's ssl cannot take such a name; the handshake fails, the server carries on.
    context = SSL.Context(SSL.TLS_METHOD)
    sock = socket.create_connection(("127.0.0.1", server.port), 5)
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))
    connection = SSL.Connection(context, sock)
    connection.set_connect_state()
    connection.set_tlsext_host_name("bé.test".encode("latin-1"))
    with pytest.raises(SSL.Error):
        connection.do_handshake()
    connection.close()
    server.wait_for(r"refused a handshake: its SNI name b'b\\xe9\.test' is not ASCII")
    assert "Exception ignored" not in server.stderr and "Traceback" not in server.stderr, (
        server.stderr)
    assert_serves_tls(server.port)
