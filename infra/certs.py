"""Test certificate chains (root CA, one intermediate, leaf) for TLS listeners and backends."""

import datetime
import logging
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from servers import keypair

__all__ = [
    "GENERATED_KEY_TYPES",
    "NLB_KEY_TYPES",
    "CertificateAuthority",
    "CertificateChain",
    "CertificateError",
    "CertificateFileError",
    "CertificateFiles",
    "KeyMismatchError",
    "UnsupportedKeyTypeError",
    "check_key_matches",
    "dns_name_problem",
    "generate_chain",
    "key_algorithm_of",
    "key_type_of",
    "load_certificates",
    "public_key_fingerprint",
    "read_pem_file",
    "MAX_PEM_FILE_BYTES",
    "ACM_CERTIFICATE_MAX_BYTES",
    "ACM_PRIVATE_KEY_MAX_BYTES",
]

logger = logging.getLogger(__name__)

# Key types are spelled as ACM's KeyAlgorithm values, so a generated type can be compared
# with describe_certificate's answer as it is.
GENERATED_KEY_TYPES = ("RSA_2048", "RSA_3072", "EC_prime256v1", "EC_secp384r1")
# What the NLB accepts on a TLS listener today; RSA 4096 is refused by ACM at attach time.
NLB_KEY_TYPES = frozenset(GENERATED_KEY_TYPES) | {"RSA_1024", "EC_secp521r1"}

# ACM refuses a certificate that is not yet valid, and the clocks of this host and AWS can
# disagree by minutes; starting an hour early absorbs that. A few days covers any test run.
_BACKDATE = datetime.timedelta(hours=1)
_LIFETIME = datetime.timedelta(days=5)
_CA_KEY_TYPE = "EC_prime256v1"  # fast to generate; a CA's key type does not limit the leaf's
# A DNS label as X.509 dNSName and ACM take it: letters, digits and hyphens (RFC 1034's
# "LDH" rule, RFC 5280 4.2.1.6), neither starting nor ending with a hyphen, at most 63 long.
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_MAX_DNS_NAME = 253  # RFC 1035's limit on a name in text form, and ACM's on a domain name
_DNS_ACCEPTED = ("accepted labels of ASCII letters, digits and hyphens (not first or last, "
                 "at most 63 characters) separated by dots, at most 253 characters in all, "
                 "optionally starting with one '*.' wildcard label")
# ImportCertificate takes a certificate of at most 32 KiB (the API model's limit) and, as the
# ACM guide says, a private key of at most 5 KB. A chain may reach 2 MiB at the API, but a
# real chain of intermediates is a few kilobytes: every file (certificate, key, chain, CA
# bundle) is read only up to 1 MiB, a bound no real one reaches and a device or runaway file
# (/dev/zero) cannot turn into a MemoryError.
ACM_CERTIFICATE_MAX_BYTES = 32 * 1024
ACM_PRIVATE_KEY_MAX_BYTES = 5 * 1024
MAX_PEM_FILE_BYTES = 1024 * 1024
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_ORGANIZATION = "NLB TLS verification suite (test only)"
# cryptography names P-256 "secp256r1"; ACM calls the same curve "prime256v1".
_ACM_CURVE_NAMES = {"secp256r1": "prime256v1"}

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]


class CertificateError(ValueError):
    """A certificate or key that cannot be used; the message names the value and the rule."""


class KeyMismatchError(CertificateError):
    """The private key does not belong to the certificate; both fingerprints are attached."""

    def __init__(self, message: str, cert_fingerprint: str, key_fingerprint: str) -> None:
        super().__init__(message)
        self.cert_fingerprint = cert_fingerprint
        self.key_fingerprint = key_fingerprint


class UnsupportedKeyTypeError(CertificateError):
    """A key type this module cannot generate or name."""


class CertificateFileError(CertificateError):
    """A certificate, key, chain or CA bundle file that cannot be read as one: missing,
    unreadable, not a regular file, or larger than MAX_PEM_FILE_BYTES."""


def read_pem_file(path: Union[str, Path], limit: int = MAX_PEM_FILE_BYTES) -> bytes:
    """The bytes of the regular file PATH, of at most LIMIT bytes.

    Raises CertificateFileError naming the file and the rule it breaks: a directory, a
    device or FIFO (opened without waiting for a writer), a file over LIMIT, or one that
    cannot be opened. Only LIMIT + 1 bytes are ever read.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise CertificateFileError(f"cannot read {path}: {error.strerror}") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise CertificateFileError(f"{path} is {kind}; accepted a PEM file")
    with os.fdopen(descriptor, "rb", buffering=0) as handle:
        chunks, size = [], 0
        while size <= limit:
            chunk = handle.read(limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    if size > limit:
        raise CertificateFileError(f"{path} is larger than {limit} bytes; accepted a PEM file "
                                   f"of at most {limit} bytes")
    return b"".join(chunks)


def load_certificates(pem: bytes, *, only_certificates: bool = True) -> List[x509.Certificate]:
    """The certificates of the PEM text PEM, in order; at least one.

    With ONLY_CERTIFICATES (a chain file for ACM), anything but CERTIFICATE blocks and the
    whitespace between them is refused; without it (a CA bundle, where comments between
    certificates are common) other text is skipped. Raises CertificateError naming what was
    found: never the content of a block, which may be a private key.
    """
    blocks = list(_PEM_BLOCK.finditer(pem))
    if only_certificates:
        others = sorted({b.group(1).decode() for b in blocks} - {"CERTIFICATE"})
        if others:
            raise CertificateError(f"holds {', '.join(others)} blocks; accepted CERTIFICATE "
                                   "blocks only")
        rest = _PEM_BLOCK.sub(b"", pem)
        if rest.strip():
            raise CertificateError(f"holds {len(rest.strip())} bytes outside PEM blocks; "
                                   "accepted CERTIFICATE blocks only")
    certificates = []
    for index, block in enumerate(b for b in blocks if b.group(1) == b"CERTIFICATE"):
        try:
            certificates.append(x509.load_pem_x509_certificate(block.group(0)))
        except ValueError as error:
            raise CertificateError(f"certificate {index + 1} cannot be read: {error}") from None
    if not certificates:
        raise CertificateError("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return certificates


@dataclass(frozen=True)
class CertificateFiles:
    """Absolute paths of a chain written by CertificateChain.write."""

    cert_file: Path  # the leaf certificate alone
    key_file: Path  # the leaf's private key, mode 0600
    chain_file: Path  # the intermediates, leaf excluded, as ACM import wants them
    ca_bundle: Path  # the root certificate, for clients to verify against


@dataclass(frozen=True)
class CertificateChain:
    """A leaf certificate with its key, the intermediates and the root, all PEM."""

    leaf_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)  # never in a repr, so never in a log or test report
    chain_pem: bytes = field(repr=False)  # intermediates in order, the leaf excluded
    ca_bundle_pem: bytes = field(repr=False)  # the root
    dns_names: Tuple[str, ...]
    key_type: str

    @property
    def fullchain_pem(self) -> bytes:
        """Leaf then intermediates: what a TLS server sends, in one file."""
        return self.leaf_pem + self.chain_pem

    def write(self, directory: Union[str, Path], name: str = "server") -> CertificateFiles:
        """Write NAME-cert.pem, NAME-key.pem (0600), NAME-chain.pem and NAME-ca.pem.

        A missing directory is created with mode 0700; an existing one keeps its mode (it
        may be shared, like /tmp), and the key file is 0600 either way. Existing files of
        the same names are replaced.
        """
        folder = Path(directory).absolute()
        if not folder.exists():
            folder.mkdir(parents=True, mode=0o700)
            os.chmod(folder, 0o700)  # mkdir's mode is filtered through the umask
        files = CertificateFiles(
            cert_file=folder / f"{name}-cert.pem",
            key_file=folder / f"{name}-key.pem",
            chain_file=folder / f"{name}-chain.pem",
            ca_bundle=folder / f"{name}-ca.pem",
        )
        _write_private(files.key_file, self.key_pem)
        files.cert_file.write_bytes(self.leaf_pem)
        files.chain_file.write_bytes(self.chain_pem)
        files.ca_bundle.write_bytes(self.ca_bundle_pem)
        logger.debug("wrote certificate chain for %s to %s", ", ".join(self.dns_names), folder)
        return files


def _write_private(path: Path, data: bytes) -> None:
    """Write data readable by the owner only: the mode is 0600 before the first byte lands."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an existing file keeps its old mode through os.open
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(data)


def _generate_key(key_type: str) -> PrivateKey:
    if key_type == "RSA_2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "RSA_3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if key_type == "EC_prime256v1":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "EC_secp384r1":
        return ec.generate_private_key(ec.SECP384R1())
    raise UnsupportedKeyTypeError(
        f"cannot generate key type {key_type!r}; accepted: {', '.join(GENERATED_KEY_TYPES)}"
    )


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_dns_names(dns_names: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(dns_names, str):
        dns_names = (dns_names,)
    names = tuple(dns_names)
    if not names:
        raise CertificateError("a leaf certificate needs at least one DNS name; got none")
    for name in names:
        problem = dns_name_problem(name)
        if problem:
            raise CertificateError(problem)
    return names


def dns_name_problem(name: object) -> Optional[str]:
    """Why NAME is not a DNS name a certificate (and ACM) takes, naming it; None if it is."""
    reason = _dns_name_reason(name)
    if reason is None:
        return None
    shown = repr(name) if len(repr(name)) <= 80 else f"{name[:60]!r}..."
    return f"{shown} is not a DNS name: {reason}; {_DNS_ACCEPTED}"


def _dns_name_reason(name: object) -> Optional[str]:
    if not isinstance(name, str):
        return "not a string"
    if not name:
        return "it is empty"
    if len(name) > _MAX_DNS_NAME:
        return f"it is {len(name)} characters long"
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if not labels:
            return "a wildcard needs a name below it ('*.example.com')"
    for label in labels:
        if "*" in label:
            return f"label {label!r}: a wildcard is accepted only as the whole first label"
        if not label:
            return "it has an empty label (a leading, trailing or doubled dot)"
        if len(label) > 63:
            return f"label {label[:20]!r}... is {len(label)} characters long"
        if not _LABEL.fullmatch(label):
            return f"label {label!r} holds other characters or starts or ends with '-'"
    return None


class CertificateAuthority:
    """A test CA: a root made with root(), intermediates made with create_intermediate().

    Each CA signs with SHA-256 and writes the extensions strict RFC 5280 verifiers require
    (critical basic constraints with a path length, critical key usage, key identifiers).
    """

    def __init__(
        self,
        key: PrivateKey,
        certificate: x509.Certificate,
        parent: Optional["CertificateAuthority"] = None,
    ) -> None:
        self.key = key
        self.certificate = certificate
        self.parent = parent

    def __repr__(self) -> str:
        return f"CertificateAuthority({self.certificate.subject.rfc4514_string()!r})"

    @classmethod
    def root(cls, common_name: Optional[str] = None) -> "CertificateAuthority":
        """A fresh self-signed root CA that may have one level of intermediates below it."""
        key = _generate_key(_CA_KEY_TYPE)
        name = _name(common_name or f"NLB suite test root CA {secrets.token_hex(4)}")
        builder = _ca_builder(name, name, key.public_key(), key.public_key(), path_length=1)
        return cls(key, builder.sign(key, hashes.SHA256()))

    @property
    def cert_pem(self) -> bytes:
        """This CA's certificate, PEM."""
        return _pem(self.certificate)

    def _path_length(self) -> int:
        constraints = self.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        return constraints.value.path_length or 0

    def create_intermediate(self, common_name: Optional[str] = None) -> "CertificateAuthority":
        """An intermediate CA signed by this one, allowed to sign leaves only (path length 0).

        Raises CertificateError when this CA's own path length forbids another CA below it.
        """
        if self._path_length() < 1:
            raise CertificateError(
                f"{self!r} has path length 0 and may sign leaf certificates only"
            )
        key = _generate_key(_CA_KEY_TYPE)
        name = _name(common_name or f"NLB suite test intermediate CA {secrets.token_hex(4)}")
        builder = _ca_builder(
            name, self.certificate.subject, key.public_key(), self.key.public_key(),
            path_length=self._path_length() - 1,
        )
        return CertificateAuthority(key, builder.sign(self.key, hashes.SHA256()), parent=self)

    def issue_leaf(self, dns_names: Sequence[str], key_type: str = "RSA_2048") -> CertificateChain:
        """A serverAuth leaf for dns_names with a new key_type key, and its chain to the root."""
        names = _check_dns_names(dns_names)
        key = _generate_key(key_type)
        builder = _leaf_builder(names, self.certificate.subject, key, self.key.public_key())
        leaf = builder.sign(self.key, hashes.SHA256())
        return CertificateChain(
            leaf_pem=_pem(leaf),
            key_pem=_key_pem(key),
            chain_pem=b"".join(_pem(ca.certificate) for ca in self._intermediates()),
            ca_bundle_pem=_pem(self._root().certificate),
            dns_names=names,
            key_type=key_type,
        )

    def _intermediates(self) -> List["CertificateAuthority"]:
        """This CA and its parents below the root, nearest first."""
        chain, ca = [], self
        while ca.parent is not None:
            chain.append(ca)
            ca = ca.parent
        return chain

    def _root(self) -> "CertificateAuthority":
        ca = self
        while ca.parent is not None:
            ca = ca.parent
        return ca


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _base_builder(subject, issuer, public_key, issuer_public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key),
            critical=False,
        )
    )


def _ca_builder(subject, issuer, public_key, issuer_public_key, *, path_length: int):
    usage = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )
    return (
        _base_builder(subject, issuer, public_key, issuer_public_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(usage, critical=True)
    )


def _leaf_builder(names: Tuple[str, ...], issuer, key: PrivateKey, issuer_public_key):
    # RSA key transport (the AES*-SHA suites) encrypts the premaster secret to the
    # certificate's key, which needs keyEncipherment; ECDHE suites only sign.
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False,
        key_encipherment=isinstance(key, rsa.RSAPrivateKey), data_encipherment=False,
        key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION)]
    if len(names[0]) <= 64:  # X.520 upper bound of a commonName
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, names[0]))
    # The subject is never empty, so the subjectAltName stays non-critical (RFC 5280
    # 4.2.1.6); strict verifiers refuse a critical SAN next to a non-empty subject.
    san = x509.SubjectAlternativeName([x509.DNSName(name) for name in names])
    return (
        _base_builder(x509.Name(attributes), issuer, key.public_key(), issuer_public_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(san, critical=False)
    )


def generate_chain(dns_names: Sequence[str], key_type: str = "RSA_2048") -> CertificateChain:
    """A fresh root, one intermediate and a leaf for dns_names with a key_type key.

    key_type is one of GENERATED_KEY_TYPES (ACM KeyAlgorithm spelling). Raises
    UnsupportedKeyTypeError for any other type and CertificateError for a bad DNS name.
    """
    names = _check_dns_names(dns_names)
    if key_type not in GENERATED_KEY_TYPES:
        _generate_key(key_type)  # raises UnsupportedKeyTypeError naming the accepted types
    started = time.monotonic()
    chain = CertificateAuthority.root().create_intermediate().issue_leaf(names, key_type)
    logger.info(
        "generated a %s test certificate chain for %s in %.2f s",
        key_type, ", ".join(names), time.monotonic() - started,
    )
    return chain


def _load_certificate(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as error:
        raise CertificateError(f"not a PEM certificate: {error}") from None


def key_type_of(cert_pem: bytes) -> str:
    """The ACM KeyAlgorithm name of the certificate's key: RSA_2048, EC_prime256v1, ...

    Odd sizes and curves are named the same way (RSA_4096, EC_secp256k1). Raises
    UnsupportedKeyTypeError for keys that are neither RSA nor EC (Ed25519, DSA).
    """
    public_key = _load_certificate(cert_pem).public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA_{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = public_key.curve.name
        return f"EC_{_ACM_CURVE_NAMES.get(curve, curve)}"
    raise UnsupportedKeyTypeError(
        f"the certificate's key is {type(public_key).__name__}; accepted: RSA or EC keys"
    )


def key_algorithm_of(cert_pem: bytes) -> str:
    """"RSA" or "EC": the family that decides which TLS 1.2 suites the certificate can serve."""
    return key_type_of(cert_pem).split("_", 1)[0]


def check_key_matches(cert_pem: bytes, key_pem: bytes) -> None:
    """Raise KeyMismatchError unless key_pem is the private key of cert_pem's first certificate.

    Other problems (not PEM, an encrypted key, an unsupported key) raise CertificateError.
    The check itself lives in servers.keypair, which the backend servers use without
    third-party packages.
    """
    try:
        keypair.check_pair(cert_pem, key_pem)
    except keypair.KeyMismatch as error:
        raise KeyMismatchError(
            str(error), error.cert_fingerprint, error.key_fingerprint
        ) from None
    except keypair.KeyPairError as error:
        raise CertificateError(str(error)) from None


def public_key_fingerprint(pem: bytes) -> str:
    """SHA-256 hex of the SubjectPublicKeyInfo DER of a PEM certificate or private key.

    Equals `openssl x509 -in C -noout -pubkey | openssl pkey -pubin -outform DER |
    openssl dgst -sha256`. Raises CertificateError for input it cannot read.
    """
    try:
        return keypair.spki_fingerprint(pem)
    except keypair.KeyPairError as error:
        raise CertificateError(str(error)) from None
