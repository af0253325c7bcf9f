"""A threaded standard-library TLS server on 127.0.0.1, configured explicitly, for probing."""

import logging
import socket
import ssl
import threading
import time
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence

from infra import policies
from infra._openssl import set_tls13_ciphersuites
from infra.certs import CertificateChain, public_key_fingerprint

logger = logging.getLogger(__name__)


def chain_context(chain: CertificateChain, directory: Path) -> ssl.SSLContext:
    """A server context holding chain's leaf, intermediates and key, otherwise untouched."""
    stem = f"server-{public_key_fingerprint(chain.leaf_pem)[:12]}"
    files = chain.write(directory, name=stem)
    fullchain = directory / f"{stem}-fullchain.pem"
    fullchain.write_bytes(chain.fullchain_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(fullchain), str(files.key_file))
    return context


def server_context(
    chain: CertificateChain,
    directory: Path,
    *,
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    ciphers: Optional[str] = None,
    tls13_suites: Optional[str] = None,
    alpn: Optional[Sequence[str]] = None,
) -> ssl.SSLContext:
    """A server context for chain with exactly the given versions, ciphers and ALPN list.

    ciphers is an OpenSSL list for TLS 1.2 and older (add @SECLEVEL=0 for TLS 1.0/1.1);
    tls13_suites the TLS 1.3 list. None keeps OpenSSL's defaults. Server preference is on.
    """
    context = chain_context(chain, directory)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ssl.TLSVersion", category=DeprecationWarning)
        context.minimum_version, context.maximum_version = min_version, max_version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    if tls13_suites is not None:
        set_tls13_ciphersuites(context, tls13_suites)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def policy_server(chain: CertificateChain, directory: Path, policy, *, extra: Sequence[str] = (),
                  without: Sequence[str] = (),
                  max_version: Optional[ssl.TLSVersion] = None) -> "TlsServer":
    """A server configured from a security policy, then given extra TLS 1.2-and-older ciphers
    or stripped of some: a listener that differs from its policy in known ways."""
    context = chain_context(chain, directory)
    policies.configure_context(context, policy, server=True)
    legacy = [c for c in policy.legacy_ciphers if c not in without] + list(extra)
    context.set_ciphers(":".join(legacy) + ":@SECLEVEL=0")
    if max_version is not None:
        context.maximum_version = max_version
    return TlsServer(context)


class TlsServer:
    """Accepts TLS connections on 127.0.0.1 with a thread each until stopped.

    sni maps server names to other contexts (another certificate); names not in it get the
    default context. Completed handshakes are recorded in `accepted` as (version, cipher)
    pairs, and the SNI names received (None when absent) in `server_names`.
    """

    def __init__(self, context: ssl.SSLContext, sni: Optional[Dict[str, ssl.SSLContext]] = None):
        self.context = context
        self.accepted = []
        self.server_names = []
        self._lock = threading.Lock()
        context.sni_callback = lambda sslobj, name, _ctx: self._choose(sslobj, name, sni or {})
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="tls-test-server", daemon=True)

    def _choose(self, sslobj, name, sni) -> None:
        with self._lock:
            self.server_names.append(name)
        if name in sni:
            sslobj.context = sni[name]

    def __enter__(self) -> "TlsServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def saw(self, record, timeout: float = 2.0) -> bool:
        """Whether a handshake with this (version, cipher) completes on the server side.

        The client can finish its handshake before the server thread records it, so this
        waits up to timeout seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if record in self.accepted:
                    return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        """Close the listening socket and wait for the accept loop to end."""
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # close() alone does not wake accept()
        except OSError:
            pass
        self._listener.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed by stop()
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(5)
        try:
            with self.context.wrap_socket(client, server_side=True) as tls:
                record = (tls.version(), tls.cipher()[0])
                with self._lock:
                    self.accepted.append(record)
                while tls.recv(1024):
                    pass
        except (ssl.SSLError, OSError) as error:
            logger.debug("test server connection ended: %s", error)
        finally:
            client.close()
