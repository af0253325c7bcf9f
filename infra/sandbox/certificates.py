"""The certificates a listener serves: material from ACM, and the NLB's choice by SNI."""

import datetime
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

__all__ = [
    "CertificateGone",
    "CertificateMaterialError",
    "ServedCertificate",
    "certificate_from_pem",
    "matches_name",
    "select_certificate",
    "split_pem",
]

logger = logging.getLogger(__name__)

_PEM_END = b"-----END CERTIFICATE-----"

# Signature hash strength for the NLB's "stronger hash" rule; unknown hashes rank lowest.
_HASH_RANK = {"md5": 1, "sha1": 2, "sha224": 3, "sha256": 4, "sha384": 5, "sha512": 6}


class CertificateMaterialError(ValueError):
    """A certificate whose PEM cannot be read; the message names the certificate."""


class CertificateGone(LookupError):
    """A listener names a certificate ACM no longer holds (moto lets it be deleted in use)."""


@dataclass(frozen=True)
class ServedCertificate:
    """One ACM certificate as a listener serves it.

    `chain_pem` holds the intermediates exactly as imported (never moto's appended CA);
    `key_pem` is None when no private key for the certificate is known locally.
    """

    arn: str
    leaf_pem: bytes
    chain_pem: bytes
    key_pem: Optional[bytes]
    dns_names: tuple[str, ...]
    key_algorithm: str
    key_bits: int
    signature_hash: str
    not_before: datetime.datetime
    not_after: datetime.datetime

    @property
    def has_key(self) -> bool:
        """True when the private key is known, so the certificate can be served."""
        return self.key_pem is not None


def split_pem(pem: bytes) -> list[bytes]:
    """Split concatenated PEM certificates into one block each, in order."""
    blocks = []
    for part in pem.split(_PEM_END):
        start = part.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            blocks.append(part[start:].strip() + b"\n" + _PEM_END + b"\n")
    return blocks


def _names_of(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = extension.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if not names:
        # Without a SAN extension clients fall back to the subject's CN; so does the match.
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(name.lower().rstrip(".") for name in names)


def _key_of(cert: x509.Certificate, arn: str) -> tuple[str, int]:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", key.curve.key_size
    raise CertificateMaterialError(
        f"certificate {arn} has a {type(key).__name__} key; the NLB serves RSA and EC keys only"
    )


def certificate_from_pem(
    arn: str, leaf_pem: bytes, chain_pem: bytes, key_pem: Optional[bytes]
) -> ServedCertificate:
    """Describe one certificate from its PEM; raises CertificateMaterialError if unreadable."""
    try:
        cert = x509.load_pem_x509_certificate(leaf_pem)
    except ValueError as exc:
        raise CertificateMaterialError(f"certificate {arn} is not PEM: {exc}") from exc
    algorithm, bits = _key_of(cert, arn)
    hash_algorithm = cert.signature_hash_algorithm
    return ServedCertificate(
        arn=arn,
        leaf_pem=leaf_pem,
        chain_pem=chain_pem,
        key_pem=key_pem,
        dns_names=_names_of(cert),
        key_algorithm=algorithm,
        key_bits=bits,
        signature_hash=hash_algorithm.name if hash_algorithm else "",
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def matches_name(server_name: str, dns_name: str) -> bool:
    """Whether a certificate name covers a server name.

    A wildcard stands for exactly one whole left-most label (RFC 6125 section 6.4.3 as
    browsers apply it): `*.example.com` covers `a.example.com`, not `example.com` nor
    `a.b.example.com`. Comparison ignores case and a trailing dot.
    """
    name = server_name.lower().rstrip(".")
    pattern = dns_name.lower().rstrip(".")
    if not pattern.startswith("*."):
        return name == pattern
    head, _, rest = name.partition(".")
    return bool(head) and rest == pattern[2:]


def _preference(cert: ServedCertificate) -> tuple:
    # The NLB's order among several matches: ECDSA over RSA, then the stronger hash, then
    # the longer key, then the validity period (the one valid the longest wins).
    return (
        cert.key_algorithm == "EC",
        _HASH_RANK.get(cert.signature_hash, 0),
        cert.key_bits,
        cert.not_after,
    )


def select_certificate(
    server_name: Optional[str],
    default: ServedCertificate,
    listed: Sequence[ServedCertificate],
    client_accepts: Callable[[str], bool] = lambda key_algorithm: True,
) -> ServedCertificate:
    """The certificate the NLB serves for a ClientHello's SNI value.

    No SNI, or a name matching nothing, gets the default certificate. Otherwise the best of
    the matching certificates (default included) by `_preference`; ties keep the default,
    then the listing order. The NLB picks "the best certificate the client can support":
    `client_accepts(key_algorithm)` says whether the client's offer can use an `RSA` or
    `EC` key, and matches it cannot use are passed over while another one matches.
    """
    if not server_name:
        return default
    candidates = [default] + [cert for cert in listed if cert.arn != default.arn]
    matching = [
        cert for cert in candidates
        if any(matches_name(server_name, dns_name) for dns_name in cert.dns_names)
    ]
    if not matching:
        return default
    usable = [cert for cert in matching if client_accepts(cert.key_algorithm)]
    matching = usable or matching
    # max() keeps the first of equal elements, so the default wins a tie.
    return max(matching, key=_preference)


def strip_appended(chain_pem: bytes, appended: Iterable[bytes]) -> bytes:
    """The chain without certificates moto adds on its own (its hard-coded Amazon CA)."""
    unwanted = {block.strip() for cert in appended for block in split_pem(cert)}
    kept = [block for block in split_pem(chain_pem) if block.strip() not in unwanted]
    return b"".join(kept)


KeyFinder = Callable[[bytes], Optional[bytes]]
"""Given a certificate's PEM, the matching private key's PEM, or None when unknown."""


def _moto_bundle(account_id: str, region: str, arn: str):
    """moto's in-process record of an ACM certificate, or None when moto is elsewhere."""
    try:
        from moto.acm.exceptions import CertificateNotFound
        from moto.backends import get_backend
    except ImportError:
        return None
    try:
        return get_backend("acm")[account_id][region].get_certificate(arn)
    except CertificateNotFound as exc:
        raise CertificateGone(f"certificate {arn} is not in ACM any more") from exc


def _moto_appended_ca() -> tuple[bytes, ...]:
    try:
        from moto.acm.models import AWS_ROOT_CA
    except ImportError:
        return ()
    return (AWS_ROOT_CA,)


class CertificateSource:
    """Reads what a listener serves for an ACM certificate ARN.

    ACM never hands out a private key. When the moto server runs in this process, its ACM
    backend holds the key and the chain as imported; otherwise the chain comes from
    get_certificate (moto's appended Amazon CA removed) and the key from `key_finder`.
    """

    def __init__(self, acm_client, account_id: str, region: str, key_finder: KeyFinder):
        self._acm = acm_client
        self._account_id = account_id
        self._region = region
        self._key_finder = key_finder

    def load(self, arn: str) -> ServedCertificate:
        """The certificate for `arn`; raises CertificateGone when ACM no longer has it."""
        bundle = _moto_bundle(self._account_id, self._region, arn)
        if bundle is not None:
            leaf, chain, key = bundle.cert, bundle.chain, bundle.key
        else:
            leaf, chain, key = self._from_api(arn)
        chain = strip_appended(chain, _moto_appended_ca())
        if not key:
            key = self._key_finder(leaf)
        return certificate_from_pem(arn, leaf, chain, key or None)

    def _from_api(self, arn: str) -> tuple[bytes, bytes, Optional[bytes]]:
        try:
            answer = self._acm.get_certificate(CertificateArn=arn)
        except self._acm.exceptions.ResourceNotFoundException as exc:
            raise CertificateGone(f"certificate {arn} is not in ACM any more") from exc
        chain = answer.get("CertificateChain", "").encode()
        return answer["Certificate"].encode(), chain, None
