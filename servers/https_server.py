"""The TLS backend: `python -m servers.https_server [-l ADDR] [-p PORT] [--cert --key]`.

The answers of servers.http_server, over TLS; the JSON document adds the TLS version,
cipher, SNI server name and ALPN protocol of the accepted connection. Behind a load
balancer that re-encrypts, that is the load-balancer-to-target leg, which only the
target can see.

It accepts TLS 1.0 to 1.3 with every cipher OpenSSL has (security level 0), so either
backend policy the load balancer may use (ELBSecurityPolicy-2016-08 or
ELBSecurityPolicy-TLS13-1-0-2021-06) can connect. Without --cert/--key it presents a
throwaway self-signed certificate made with the openssl command at start (the NLB does
not validate target certificates); its key lives in a private temporary directory only
until it is loaded.

A certificate and key that do not belong together, an encrypted key, a missing file,
a file that is not PEM, not a regular file or larger than 1 MiB stop the server before
it listens: one message, exit status 2.

In-process use::

    from servers.https_server import make_server
    server = make_server("127.0.0.1", 0, cert_file="leaf.pem", key_file="leaf.key")
    server.start()
    ...
    server.stop()
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

from ._cli import (
    StartupInterrupted,
    StopRequest,
    add_server_arguments,
    chosen_port,
    configure_logging,
    fail,
    limits_from,
    listening_line,
    serve_until_stopped,
    stopped_while_starting,
)
from ._http import SNI_ATTRIBUTE, BackendServer
from ._request import Limits
from .keypair import EncryptedKey, KeyPairError, NotPem, check_pair, spki_fingerprint

__all__ = [
    "CIPHERS",
    "DEFAULT_PORT",
    "MAX_PEM_FILE_BYTES",
    "CertificateLoadError",
    "CertificateSetupError",
    "HttpsServer",
    "OpensslMissing",
    "PresentedCertificate",
    "SELF_SIGNED_KEY_BITS",
    "SELF_SIGNED_KEY_TYPE",
    "UnreadableFile",
    "main",
    "make_server",
    "tls_context",
]

_log = logging.getLogger("servers.https_server")  # __name__ is "__main__" under -m
PROG = "https_server"
DEFAULT_PORT = 8443
DESCRIPTION = (
    "The TLS backend: the HTTP backend's answers over TLS 1.0 to 1.3, with the "
    "negotiated version, cipher and SNI name in its JSON."
)
# Every cipher but unauthenticated and null ones, at security level 0: OpenSSL 3 refuses
# TLS 1.0/1.1 and SHA-1 suites above it, and the 2016-08 backend policy offers them.
CIPHERS = "ALL:!aNULL:!eNULL:@SECLEVEL=0"
ALPN_PROTOCOLS = ("http/1.1", "http/1.0")
# The key of the throwaway self-signed certificate, its type spelled as a handshake reports
# it ("RSA" or "EC"): exported so a client can know it without a handshake.
SELF_SIGNED_KEY_TYPE = "RSA"
SELF_SIGNED_KEY_BITS = 2048
_OPENSSL_TIMEOUT = 60.0
# A certificate, key or chain file is a few KiB; the cap keeps a wrong path (a device,
# a log file) from being read into memory whole.
MAX_PEM_FILE_BYTES = 1024 * 1024


class CertificateSetupError(Exception):
    """The server cannot present a certificate; the message names the file and fix."""


class UnreadableFile(CertificateSetupError):
    """A --cert, --key or --chain file is missing, not a regular file, too large (over
    MAX_PEM_FILE_BYTES) or not readable."""


class OpensslMissing(CertificateSetupError):
    """No openssl command to make the throwaway certificate with."""


class CertificateLoadError(CertificateSetupError):
    """OpenSSL refused files the checks here accepted, or `openssl req` failed."""


@dataclass(frozen=True)
class PresentedCertificate:
    """What the server presents: a description for the log, its public key's SHA-256."""

    source: str
    spki_sha256: str


class HttpsServer(BackendServer):
    """A BackendServer of kind "https"; certificate None: the caller's SSLContext."""

    def __init__(
        self,
        address: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        certificate: Optional[PresentedCertificate],
        limits: Optional[Limits] = None,
    ) -> None:
        self.certificate = certificate
        super().__init__(
            address, port, kind="https", limits=limits, ssl_context=ssl_context
        )


def make_server(
    address: str = "0.0.0.0",
    port: int = DEFAULT_PORT,
    *,
    cert_file: Optional[str] = None,
    key_file: Optional[str] = None,
    chain_file: Optional[str] = None,
    limits: Optional[Limits] = None,
    ssl_context: Optional[ssl.SSLContext] = None,
) -> HttpsServer:
    """A bound, not yet serving, HTTPS backend.

    With ssl_context, that context is used as it is (an SNI recorder is added to it);
    otherwise tls_context() with the files given, or with a throwaway self-signed
    certificate when cert_file and key_file are both None. The certificate is loaded
    before the port is bound. Raises CertificateSetupError or keypair.KeyPairError for
    certificate problems, OSError when the address cannot be used.
    """
    certificate = None
    if ssl_context is None:
        ssl_context = tls_context()
        if cert_file is None and key_file is None:
            certificate = _load_self_signed(ssl_context, socket.gethostname())
        elif cert_file is None or key_file is None:
            raise ValueError("cert_file and key_file go together: give both or neither")
        else:
            certificate = _load_files(ssl_context, cert_file, key_file, chain_file)
    else:
        record_sni(ssl_context)
    return HttpsServer(
        address, port, ssl_context=ssl_context, certificate=certificate, limits=limits
    )


def tls_context() -> ssl.SSLContext:
    """A server context: TLS 1.0 to 1.3, every cipher, ALPN http/1.1, SNI recorded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        # Python 3.10+ deprecates TLSVersion.TLSv1; the 2016-08 backend policy uses it.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.set_ciphers(CIPHERS)
    # Honour the client's cipher order: the NLB's backend policy then decides what the
    # NLB-to-target leg negotiates, which is what the suite checks through this server.
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    # A client offering only h2 gets no ALPN answer rather than a failed handshake.
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    record_sni(context)
    return context


def record_sni(context: ssl.SSLContext) -> None:
    """Make context note each connection's SNI server name on its SSLSocket.

    The name is only visible during the handshake, in the servername callback; an
    existing callback still runs after the note is taken.
    """
    previous = context.sni_callback

    def note(sslsocket, server_name, handshake_context):  # noqa: ANN001, ANN202
        try:
            setattr(sslsocket, SNI_ATTRIBUTE, server_name)
        except AttributeError:  # an SSLObject from wrap_bio takes no attributes
            pass
        if previous is not None:
            return previous(sslsocket, server_name, handshake_context)
        return None

    context.sni_callback = note


def _quiet_non_ascii_sni() -> None:
    # CPython's ssl decodes the SNI name before the servername callback runs and fails the
    # handshake of a name that is not ASCII, reporting the UnicodeDecodeError through
    # sys.unraisablehook ("Exception ignored ..." and a traceback). The refusal stands
    # (the client gets an internal_error alert); the traceback becomes one log line.
    previous = sys.unraisablehook

    def hook(unraisable):  # noqa: ANN001, ANN202
        if isinstance(unraisable.exc_value, UnicodeError) \
                and isinstance(unraisable.object, bytes):
            _log.warning("refused a handshake: its SNI name %r is not ASCII, which Python's "
                         "ssl cannot take", unraisable.object)
            return
        previous(unraisable)

    sys.unraisablehook = hook


def _load_files(
    context: ssl.SSLContext, cert_file: str, key_file: str, chain_file: Optional[str]
) -> PresentedCertificate:
    cert_pem = _read_pem(cert_file, "certificate", "x509")
    key_pem = _read_pem(key_file, "private key", "pkey")
    _check_usable(cert_file, "certificate", cert_pem)
    _check_usable(key_file, "private key", key_pem)
    # OpenSSL's own refusal is a bare KEY_VALUES_MISMATCH; check_pair names both keys.
    check_pair(cert_pem, key_pem, cert_name=cert_file, key_name=key_file)
    source = f"certificate {cert_file}, key {key_file}"
    chain_pem = b""
    if chain_file is not None:
        chain_pem = _read_pem(chain_file, "chain", "x509")
        if b"-----BEGIN CERTIFICATE-----" not in chain_pem:
            raise NotPem(
                f"the chain file {chain_file} holds no PEM CERTIFICATE block; it "
                "should hold the intermediate certificates, in order, without the leaf"
            )
        source += f", chain {chain_file}"
    with _private_directory() as directory:
        # load_cert_chain takes a chain only inside the certificate file.
        combined = os.path.join(directory, "fullchain.pem")
        Path(combined).write_bytes(cert_pem.rstrip(b"\n") + b"\n" + chain_pem)
        _load(context, combined, key_file, f"{cert_file} and {key_file}")
    return PresentedCertificate(source, spki_fingerprint(cert_pem))


def _read_pem(path: str, role: str, openssl_command: str) -> bytes:
    data = _read_small_file(path, role)
    if b"-----BEGIN " not in data:
        raise NotPem(
            f"the {role} file {path} is not PEM (no '-----BEGIN' line); if it is DER, "
            f"convert it: openssl {openssl_command} -inform DER -in {path} "
            f"-out {path}.pem"
        )
    return data


def _read_small_file(path: str, role: str) -> bytes:
    """The content of a regular file of at most MAX_PEM_FILE_BYTES; else UnreadableFile."""
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer, for ever. It
        # changes nothing for the regular file that is then required.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise UnreadableFile(f"the {role} file {path} does not exist") from None
    except PermissionError:
        raise UnreadableFile(f"the {role} file {path} cannot be read: permission denied"
                             ) from None
    except OSError as error:
        raise UnreadableFile(f"the {role} file {path} cannot be opened: {error.strerror}"
                             ) from None
    with open(descriptor, "rb") as file:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise UnreadableFile(f"the {role} file {path} is a directory")
        if not stat.S_ISREG(mode):
            raise UnreadableFile(
                f"the {role} file {path} is not a regular file ({_file_kind(mode)}); "
                "give a PEM file"
            )
        # One byte over the cap tells a file that grew since fstat from one that fits.
        data = file.read(MAX_PEM_FILE_BYTES + 1)
    if len(data) > MAX_PEM_FILE_BYTES:
        raise UnreadableFile(
            f"the {role} file {path} is larger than {MAX_PEM_FILE_BYTES} bytes (1 MiB); "
            "a PEM certificate, key or chain is a few KiB: check the path"
        )
    return data


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "not a file")


def _check_usable(path: str, role: str, pem: bytes) -> None:
    """Raise the keypair error for a file whose public key cannot be read, naming it."""
    try:
        spki_fingerprint(pem)
    except EncryptedKey:
        raise EncryptedKey(
            f"the {role} file {path} is encrypted and the server cannot prompt for a "
            f"passphrase; decrypt it (openssl pkey -in {path} -out {path}.plain, then "
            "chmod 600 it) and pass the decrypted file"
        ) from None
    except KeyPairError as error:
        raise type(error)(f"the {role} file {path}: {error}") from None


def _load(context: ssl.SSLContext, cert_path: str, key_path: str, what: str) -> None:
    try:
        # The password callback keeps OpenSSL from prompting on a terminal for a key
        # check_pair did not see as encrypted; the empty password then fails to decrypt.
        context.load_cert_chain(cert_path, key_path, password=lambda: b"")
    except ssl.SSLError as error:
        raise CertificateLoadError(
            f"OpenSSL could not load {what}: {error.reason or error}"
        ) from None


@contextlib.contextmanager
def _private_directory() -> Iterator[str]:
    """A temporary directory only this user can enter (mode 0700), removed after."""
    try:
        directory = tempfile.mkdtemp(prefix="https-server-")
    except OSError as error:
        raise CertificateLoadError(
            f"cannot create a private temporary directory ({error}); set TMPDIR to a "
            "writable directory"
        ) from None
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _load_self_signed(context: ssl.SSLContext, hostname: str) -> PresentedCertificate:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise OpensslMissing(
            "no openssl command on PATH to make a throwaway self-signed certificate; "
            "install it (dnf install openssl, apt-get install openssl) or pass --cert "
            "and --key"
        )
    common_name = re.sub(r"[^A-Za-z0-9.-]", "-", hostname)[:64] or "localhost"
    with _private_directory() as directory:
        key_path = os.path.join(directory, "key.pem")
        cert_path = os.path.join(directory, "cert.pem")
        # Created 0600 before openssl writes into it, whatever openssl's own file mode.
        os.close(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        _run_openssl_req(openssl, common_name, key_path, cert_path)
        _load(context, cert_path, key_path, "the self-signed certificate")
        fingerprint = spki_fingerprint(Path(cert_path).read_bytes())
    source = (
        f"throwaway self-signed certificate for CN={common_name} made with openssl "
        "(its key was deleted after loading)"
    )
    return PresentedCertificate(source, fingerprint)


# `openssl req -newkey rsa:BITS` makes the key with the certificate.
_NEWKEY = f"{SELF_SIGNED_KEY_TYPE.lower()}:{SELF_SIGNED_KEY_BITS}"


def _run_openssl_req(openssl: str, common_name: str, key: str, cert: str) -> None:
    names = f"DNS:{common_name},DNS:localhost,IP:127.0.0.1,IP:::1"
    command = [
        openssl, "req", "-x509", "-newkey", _NEWKEY, "-nodes", "-sha256",
        "-days", "30", "-keyout", key, "-out", cert, "-subj", f"/CN={common_name}",
        "-addext", f"subjectAltName={names}",
    ]
    try:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, timeout=_OPENSSL_TIMEOUT, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CertificateLoadError(f"could not run {openssl} req: {error}") from None
    if result.returncode != 0:
        reason = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise CertificateLoadError(
            f"{openssl} req exited with status {result.returncode}: "
            f"{reason[-1] if reason else 'no message'}"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    add_server_arguments(parser, DEFAULT_PORT)
    parser.add_argument("--cert", metavar="FILE", help="PEM certificate (leaf first)")
    parser.add_argument("--key", metavar="FILE", help="PEM private key, unencrypted")
    parser.add_argument("--chain", metavar="FILE",
                        help="PEM intermediate certificates to send after the leaf")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the server until SIGTERM or SIGINT: exit status 0; 2 when it cannot start."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together: give both, or neither for a "
                     "throwaway self-signed certificate")
    if args.chain is not None and args.cert is None:
        parser.error("--chain needs --cert and --key")
    port = chosen_port(parser, args, DEFAULT_PORT)
    _quiet_non_ascii_sni()
    stop = StopRequest().install()
    stop.watch_parent(args.parent_pid)
    configure_logging(args.verbose)
    try:
        # Loading runs openssl req or reads files: a signal interrupts it (see starting).
        with stop.starting():
            server = make_server(args.listen, port, cert_file=args.cert,
                                 key_file=args.key, chain_file=args.chain,
                                 limits=limits_from(args))
    except StartupInterrupted:
        return stopped_while_starting(stop)
    except (CertificateSetupError, KeyPairError) as error:
        return fail(PROG, str(error))
    except OSError as error:
        return fail(PROG, f"cannot listen on {args.listen} port {port}: {error}")
    certificate = server.certificate
    _log.info(
        "HTTPS server for TLS %s, TLSv1 to TLSv1.3; %s, public key SHA-256 %s",
        listening_line(server), certificate.source, certificate.spki_sha256,
    )
    return serve_until_stopped(server, stop)


if __name__ == "__main__":
    sys.exit(main())
