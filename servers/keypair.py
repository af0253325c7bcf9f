"""Whether a PEM certificate and private key belong together, with the standard library only."""

# This module ships to EC2 with the backend servers, so it reads just enough DER (X.690) to
# find a public key: Python 3.9, no third-party packages. The fingerprint is SHA-256 of the
# SubjectPublicKeyInfo DER, the value `openssl pkey -pubout -outform DER | openssl dgst
# -sha256` prints, so a user can check the message with the commands it names.

import base64
import binascii
import hashlib
import re
from typing import List, NamedTuple, Optional, Tuple, Union

__all__ = [
    "CERT_COMMAND",
    "KEY_COMMAND",
    "DerElement",
    "EncryptedKey",
    "KeyMismatch",
    "KeyPairError",
    "NotPem",
    "UnsupportedKey",
    "check_pair",
    "der_children",
    "parse_der",
    "spki_fingerprint",
]

CERT_COMMAND = (
    "openssl x509 -in {cert} -noout -pubkey | openssl pkey -pubin -outform DER"
    " | openssl dgst -sha256"
)
KEY_COMMAND = "openssl pkey -in {key} -pubout -outform DER | openssl dgst -sha256"

_SEQUENCE, _INTEGER, _BIT_STRING, _OCTET_STRING, _NULL, _OID = 0x30, 0x02, 0x03, 0x04, 0x05, 0x06
_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_KEY_LABELS = ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY")
_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL
)


class KeyPairError(ValueError):
    """A certificate or private key that cannot be used as a pair; the message says why."""


class KeyMismatch(KeyPairError):
    """The private key's public half is not the certificate's public key."""

    def __init__(self, message: str, cert_fingerprint: str, key_fingerprint: str) -> None:
        super().__init__(message)
        self.cert_fingerprint = cert_fingerprint
        self.key_fingerprint = key_fingerprint


class EncryptedKey(KeyPairError):
    """The private key is encrypted; servers and ACM import need it unencrypted."""


class NotPem(KeyPairError):
    """The input holds no PEM block of the kind needed, or the block's DER is malformed."""


class UnsupportedKey(KeyPairError):
    """A well-formed key whose public half this module cannot derive (algorithm or content)."""


class DerElement(NamedTuple):
    """One DER element: its tag byte, its whole encoding, and its content octets."""

    tag: int
    raw: bytes
    content: bytes


class _PemBlock(NamedTuple):
    label: str
    headers: str
    der: bytes


def _read_tlv(data: bytes, offset: int) -> Tuple[DerElement, int]:
    """One DER element starting at offset, and the offset just past it."""
    if offset + 2 > len(data):
        raise NotPem("DER data ends inside an element header")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise NotPem(f"DER tag 0x{tag:02x} uses the multi-byte form, which no key field needs")
    length = data[offset + 1]
    start = offset + 2
    if length == 0x80:
        raise NotPem("indefinite length is BER, not DER")
    if length & 0x80:
        count = length & 0x7F
        if count > 4 or start + count > len(data):
            raise NotPem(f"DER length of {count} bytes is out of range")
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise NotPem(f"DER element of {length} bytes runs past the end of the data")
    return DerElement(tag, data[offset:end], data[start:end]), end


def der_children(parent: DerElement) -> List[DerElement]:
    """The elements inside a constructed element, in order; raises NotPem if malformed."""
    items, offset = [], 0
    while offset < len(parent.content):
        item, offset = _read_tlv(parent.content, offset)
        items.append(item)
    return items


def parse_der(der: bytes, tag: int, what: str = "the data") -> DerElement:
    """The single DER element der holds, which must carry tag; raises NotPem otherwise."""
    try:
        element, end = _read_tlv(der, 0)
    except NotPem as error:
        raise NotPem(f"{what}: {error}") from None
    if element.tag != tag or end != len(der):
        raise NotPem(f"{what} is not a single DER element with tag 0x{tag:02x}")
    return element


def _expect(element: DerElement, tag: int, what: str) -> DerElement:
    if element.tag != tag:
        raise NotPem(f"{what}: expected DER tag 0x{tag:02x}, found 0x{element.tag:02x}")
    return element


def _oid_text(element: DerElement) -> str:
    """Dotted form of an OBJECT IDENTIFIER element."""
    body = _expect(element, _OID, "algorithm identifier").content
    if not body:
        raise NotPem("empty OBJECT IDENTIFIER")
    arcs, value = [], 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first] + arcs[1:])


def _encode(tag: int, content: bytes) -> bytes:
    """A DER element from its tag and content."""
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _pem_blocks(pem: bytes) -> List[_PemBlock]:
    """Every PEM block in the input, with its RFC 1421 headers and decoded DER."""
    blocks = []
    for match in _PEM_BLOCK.finditer(pem):
        label = match.group(1).decode("ascii")
        base64_text = match.group(2).decode("ascii", "replace").replace("\r\n", "\n")
        headers = ""
        if ":" in base64_text:  # RFC 1421 headers (Proc-Type, DEK-Info), then a blank line
            headers, _, base64_text = base64_text.partition("\n\n")
        try:
            der = base64.b64decode("".join(base64_text.split()), validate=True)
        except (binascii.Error, ValueError) as error:
            raise NotPem(f"the {label} PEM block is not valid base64: {error}") from None
        blocks.append(_PemBlock(label, headers, der))
    return blocks


def _certificate_spki(der: bytes) -> bytes:
    """The SubjectPublicKeyInfo element of an X.509 certificate (RFC 5280, 4.1)."""
    certificate = parse_der(der, _SEQUENCE, "certificate")
    tbs = der_children(_expect(der_children(certificate)[0], _SEQUENCE, "tbsCertificate"))
    fields = tbs[1:] if tbs and tbs[0].tag == 0xA0 else tbs  # [0] EXPLICIT version
    if len(fields) < 6:
        raise NotPem("tbsCertificate has too few fields to hold a public key")
    return _expect(fields[5], _SEQUENCE, "subjectPublicKeyInfo").raw


def _spki(algorithm: bytes, parameters: bytes, public_key: bytes) -> bytes:
    """A SubjectPublicKeyInfo from an algorithm OID element, its parameters and key bits."""
    identifier = _encode(_SEQUENCE, algorithm + parameters)
    return _encode(_SEQUENCE, identifier + _encode(_BIT_STRING, b"\x00" + public_key))


def _rsa_spki(rsa_private_key: bytes) -> bytes:
    """SPKI of a PKCS#1 RSAPrivateKey: RSAPublicKey is its modulus and public exponent."""
    fields = der_children(parse_der(rsa_private_key, _SEQUENCE, "RSA private key"))
    if len(fields) < 3:
        raise NotPem("RSA private key has too few fields")
    modulus = _expect(fields[1], _INTEGER, "RSA modulus").raw
    exponent = _expect(fields[2], _INTEGER, "RSA public exponent").raw
    algorithm = _encode(_OID, bytes.fromhex("2a864886f70d010101"))
    return _spki(algorithm, _encode(_NULL, b""), _encode(_SEQUENCE, modulus + exponent))


def _ec_spki(ec_private_key: bytes, curve: Optional[bytes]) -> bytes:
    """SPKI of a SEC1 ECPrivateKey, from the [1] publicKey that OpenSSL writes into it.

    Deriving the point from the private scalar would need elliptic-curve arithmetic; OpenSSL
    and `cryptography` always store the public key, so its absence is reported instead.
    """
    fields = der_children(parse_der(ec_private_key, _SEQUENCE, "EC private key"))
    tagged = {field.tag: field for field in fields[2:]}
    if curve is None and 0xA0 in tagged:
        curve = der_children(tagged[0xA0])[0].raw  # [0] EXPLICIT ECParameters
    if curve is None:
        raise UnsupportedKey("the EC private key names no curve")
    if 0xA1 not in tagged:
        raise UnsupportedKey(
            "the EC private key does not carry its public key ([1] publicKey); rewrite it "
            "with `openssl pkey -in KEY -out KEY.new` to add it"
        )
    bits = _expect(der_children(tagged[0xA1])[0], _BIT_STRING, "EC public key").content
    algorithm = _encode(_OID, bytes.fromhex("2a8648ce3d0201"))
    return _spki(algorithm, curve, bits[1:])


def _pkcs8_spki(der: bytes) -> bytes:
    """SPKI of a PKCS#8 PrivateKeyInfo (RFC 5208) holding an RSA or EC key."""
    fields = der_children(parse_der(der, _SEQUENCE, "PKCS#8 private key"))
    if len(fields) < 3:
        raise NotPem("PKCS#8 private key has too few fields")
    identifier = der_children(_expect(fields[1], _SEQUENCE, "private key algorithm"))
    algorithm = _oid_text(identifier[0])
    key = _expect(fields[2], _OCTET_STRING, "private key").content
    if algorithm == _RSA_ENCRYPTION:
        return _rsa_spki(key)
    if algorithm == _EC_PUBLIC_KEY:
        return _ec_spki(key, identifier[1].raw if len(identifier) > 1 else None)
    raise UnsupportedKey(
        f"private key algorithm {algorithm} is not supported; accepted: RSA "
        f"({_RSA_ENCRYPTION}) and EC ({_EC_PUBLIC_KEY})"
    )


def _block_spki(block: _PemBlock, name: str) -> bytes:
    """The SubjectPublicKeyInfo DER for a certificate, public key or private key block."""
    try:
        return _decode_block(block, name)
    except IndexError:
        raise NotPem(f"the {block.label} PEM block in {name} holds truncated DER") from None


def _decode_block(block: _PemBlock, name: str) -> bytes:
    if block.label == "ENCRYPTED PRIVATE KEY" or "ENCRYPTED" in block.headers:
        raise EncryptedKey(
            f"the private key {name} is encrypted; write an unencrypted copy with "
            f"`openssl pkey -in {name} -out {name}.plain` (a server cannot prompt for the "
            "passphrase)"
        )
    if block.label == "CERTIFICATE":
        return _certificate_spki(block.der)
    if block.label == "PUBLIC KEY":
        return parse_der(block.der, _SEQUENCE, "public key").raw
    if block.label == "PRIVATE KEY":
        return _pkcs8_spki(block.der)
    if block.label == "RSA PRIVATE KEY":
        return _rsa_spki(block.der)
    return _ec_spki(block.der, None)


def _first_block(pem: Union[bytes, str], labels: Tuple[str, ...], what: str) -> _PemBlock:
    if isinstance(pem, str):
        pem = pem.encode("utf-8", "replace")
    wanted = labels + ("ENCRYPTED PRIVATE KEY",) if "PRIVATE KEY" in labels else labels
    for block in _pem_blocks(pem):
        if block.label in wanted:
            return block
    raise NotPem(
        f"{what} holds no PEM block labelled {' or '.join(repr(label) for label in labels)}"
    )


def spki_fingerprint(pem: Union[bytes, str]) -> str:
    """SHA-256 hex of the SubjectPublicKeyInfo DER of the first certificate or key in pem.

    Accepts a certificate, a public key, or an unencrypted private key in PKCS#8 ("PRIVATE
    KEY", RSA or EC), PKCS#1 ("RSA PRIVATE KEY") or SEC1 ("EC PRIVATE KEY") form, as bytes
    or str. Raises NotPem, EncryptedKey or UnsupportedKey.
    """
    labels = ("CERTIFICATE", "PUBLIC KEY") + _KEY_LABELS
    block = _first_block(pem, labels, "the input")
    return hashlib.sha256(_block_spki(block, "the input")).hexdigest()


def check_pair(
    cert_pem: Union[bytes, str],
    key_pem: Union[bytes, str],
    *,
    cert_name: str = "CERT",
    key_name: str = "KEY",
) -> None:
    """Raise KeyMismatch unless key_pem is the private key of the first certificate in cert_pem.

    cert_name and key_name (file names, say) are used in the messages and the openssl
    commands they suggest. Also raises NotPem, EncryptedKey or UnsupportedKey.
    """
    cert_block = _first_block(cert_pem, ("CERTIFICATE",), cert_name)
    key_block = _first_block(key_pem, _KEY_LABELS, key_name)
    cert_fingerprint = hashlib.sha256(_block_spki(cert_block, cert_name)).hexdigest()
    key_fingerprint = hashlib.sha256(_block_spki(key_block, key_name)).hexdigest()
    if cert_fingerprint == key_fingerprint:
        return
    message = (
        f"the certificate {cert_name} and private key {key_name} do not belong together:\n"
        f"  certificate public key SHA-256: {cert_fingerprint}\n"
        f"  private key public key SHA-256: {key_fingerprint}\n"
        "compare them with:\n"
        f"  {CERT_COMMAND.format(cert=cert_name)}\n"
        f"  {KEY_COMMAND.format(key=key_name)}"
    )
    raise KeyMismatch(message, cert_fingerprint, key_fingerprint)
