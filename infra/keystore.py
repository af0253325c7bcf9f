"""A directory of generated private keys, found by the SHA-256 fingerprint of their public key.

ACM never hands a private key back, so the local data plane, which must terminate TLS with the
certificates the provisioning code imported, looks the key up here by the certificate's public
key. Keys are files of mode 0600 in a directory of mode 0700.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from infra import certs

__all__ = ["KeyStore"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[0-9a-f]{64}\.pem$")


class KeyStore:
    """Private keys in DIRECTORY, one file per key, named `FINGERPRINT.pem`."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).absolute()

    def put(self, key_pem: bytes) -> Path:
        """Store KEY_PEM (unencrypted PEM) and return its path; storing it again is harmless."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        fingerprint = certs.public_key_fingerprint(key_pem)
        path = self.directory / f"{fingerprint}.pem"
        # Created with mode 0600 so the key is never readable by others; the chmod covers a
        # file left by an earlier run with a wider mode (O_CREAT keeps an existing mode).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem)
        os.chmod(path, 0o600)
        log.debug("stored private key %s", fingerprint)
        return path

    def get(self, fingerprint: str) -> bytes | None:
        """The key whose public-key fingerprint is FINGERPRINT, or None."""
        path = self.directory / f"{fingerprint.lower()}.pem"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def key_for_certificate(self, cert_pem: bytes) -> bytes | None:
        """The private key belonging to the certificate CERT_PEM, or None when not stored."""
        return self.get(certs.public_key_fingerprint(cert_pem))

    def fingerprints(self) -> tuple[str, ...]:
        """Fingerprints of every stored key."""
        if not self.directory.is_dir():
            return ()
        return tuple(
            sorted(p.name[:-4] for p in self.directory.iterdir() if _NAME.match(p.name))
        )
