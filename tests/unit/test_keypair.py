"""Tests of servers.keypair: public-key fingerprints and certificate/key pair checks."""

import base64
import datetime
import hashlib
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from servers import keypair

pytestmark = pytest.mark.unit

KEY_SPECS = {
    "RSA_2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "RSA_3072": lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
    "EC_prime256v1": lambda: ec.generate_private_key(ec.SECP256R1()),
    "EC_secp384r1": lambda: ec.generate_private_key(ec.SECP384R1()),
}
PKCS8 = serialization.PrivateFormat.PKCS8
TRADITIONAL = serialization.PrivateFormat.TraditionalOpenSSL  # PKCS#1 for RSA, SEC1 for EC


@pytest.fixture(scope="module")
def keys():
    """One private key per key type, generated once for the module."""
    return {name: make() for name, make in KEY_SPECS.items()}


def _private_pem(key, private_format, encryption=None) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, private_format,
        encryption or serialization.NoEncryption(),
    )


def _self_signed(key) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keypair.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _cryptography_fingerprint(key) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _openssl_fingerprint(command: str, path) -> str:
    """Run one of the commands the mismatch message suggests and return its hex digest."""
    shell = command.format(cert=path, key=path)
    output = subprocess.run(
        shell, shell=True, check=True, capture_output=True, text=True, timeout=20
    ).stdout
    return output.strip().rsplit(" ", 1)[-1]


@pytest.mark.parametrize("key_type", sorted(KEY_SPECS))
@pytest.mark.parametrize("private_format", [PKCS8, TRADITIONAL], ids=["pkcs8", "traditional"])
def test_key_fingerprint_equals_cryptography_and_openssl(keys, key_type, private_format, tmp_path):
    key = keys[key_type]
    pem = _private_pem(key, private_format)
    path = tmp_path / "key.pem"
    path.write_bytes(pem)

    got = keypair.spki_fingerprint(pem)

    expected = _cryptography_fingerprint(key)
    assert got == expected, f"{key_type} {private_format.name}: expected {expected}, got {got}"
    by_openssl = _openssl_fingerprint(keypair.KEY_COMMAND, path)
    assert got == by_openssl, f"openssl printed {by_openssl}, spki_fingerprint gave {got}"


@pytest.mark.parametrize("key_type", sorted(KEY_SPECS))
def test_certificate_fingerprint_equals_openssl_pubkey_digest(keys, key_type, tmp_path):
    cert_pem = _self_signed(keys[key_type])
    path = tmp_path / "cert.pem"
    path.write_bytes(cert_pem)

    got = keypair.spki_fingerprint(cert_pem)

    by_openssl = _openssl_fingerprint(keypair.CERT_COMMAND, path)
    assert got == by_openssl, f"openssl printed {by_openssl}, spki_fingerprint gave {got}"
    assert got == _cryptography_fingerprint(keys[key_type])


@pytest.mark.parametrize("key_type", sorted(KEY_SPECS))
def test_matching_pair_passes_in_every_encoding(keys, key_type):
    key = keys[key_type]
    cert_pem = _self_signed(key)
    for private_format in (PKCS8, TRADITIONAL):
        keypair.check_pair(cert_pem, _private_pem(key, private_format))


def test_openssl_written_keys_match_their_certificate(tmp_path):
    """Keys written by the openssl tool itself (genpkey PKCS#8, `ec` SEC1, `rsa -traditional`)."""
    run = lambda *args: subprocess.run(args, check=True, capture_output=True, timeout=30)
    run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-out", str(tmp_path / "ec8.pem"))
    run("openssl", "ec", "-in", str(tmp_path / "ec8.pem"), "-out", str(tmp_path / "sec1.pem"))
    run("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
        "-out", str(tmp_path / "rsa8.pem"))
    run("openssl", "rsa", "-traditional", "-in", str(tmp_path / "rsa8.pem"),
        "-out", str(tmp_path / "rsa1.pem"))
    for base, other in (("ec8", "sec1"), ("rsa8", "rsa1")):
        run("openssl", "req", "-x509", "-new", "-key", str(tmp_path / f"{base}.pem"),
            "-subj", "/CN=openssl.test", "-days", "1", "-out", str(tmp_path / f"{base}.crt"))
        cert_pem = (tmp_path / f"{base}.crt").read_bytes()
        for name in (base, other):
            key_pem = (tmp_path / f"{name}.pem").read_bytes()
            keypair.check_pair(cert_pem, key_pem)
            expected = _openssl_fingerprint(keypair.KEY_COMMAND, tmp_path / f"{name}.pem")
            assert keypair.spki_fingerprint(key_pem) == expected, name
    assert b"BEGIN EC PRIVATE KEY" in (tmp_path / "sec1.pem").read_bytes()
    assert b"BEGIN RSA PRIVATE KEY" in (tmp_path / "rsa1.pem").read_bytes()


def test_mismatch_names_both_fingerprints_and_the_openssl_commands(keys):
    cert_pem = _self_signed(keys["RSA_2048"])
    other_key = _private_pem(keys["EC_prime256v1"], PKCS8)

    with pytest.raises(keypair.KeyMismatch) as caught:
        keypair.check_pair(cert_pem, other_key, cert_name="server.crt", key_name="server.key")

    message = str(caught.value)
    cert_fp = _cryptography_fingerprint(keys["RSA_2048"])
    key_fp = _cryptography_fingerprint(keys["EC_prime256v1"])
    assert "do not belong together" in message, message
    assert cert_fp in message and key_fp in message, message
    assert caught.value.cert_fingerprint == cert_fp
    assert caught.value.key_fingerprint == key_fp
    assert "openssl x509 -in server.crt -noout -pubkey | openssl pkey -pubin" in message
    assert "openssl pkey -in server.key -pubout -outform DER | openssl dgst -sha256" in message


def test_same_algorithm_different_key_is_a_mismatch():
    first = ec.generate_private_key(ec.SECP256R1())
    second = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(keypair.KeyMismatch):
        keypair.check_pair(_self_signed(first), _private_pem(second, TRADITIONAL))


def test_pkcs8_encrypted_key_is_reported_as_encrypted(keys):
    key = keys["EC_prime256v1"]
    pem = _private_pem(key, PKCS8, serialization.BestAvailableEncryption(b"secret"))
    assert b"ENCRYPTED PRIVATE KEY" in pem
    with pytest.raises(keypair.EncryptedKey, match="encrypted"):
        keypair.check_pair(_self_signed(key), pem)


def test_legacy_proc_type_encrypted_key_is_reported_as_encrypted(keys):
    key = keys["RSA_2048"]
    pem = _private_pem(key, TRADITIONAL, serialization.BestAvailableEncryption(b"secret"))
    assert b"Proc-Type: 4,ENCRYPTED" in pem, pem[:120]
    with pytest.raises(keypair.EncryptedKey):
        keypair.spki_fingerprint(pem)


@pytest.mark.parametrize(
    "data",
    [b"", b"not a pem file at all\n", b"\x30\x82\x01\x0a binary DER",
     b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"],
    ids=["empty", "text", "der", "bad-base64"],
)
def test_input_that_is_not_pem_raises_not_pem(data):
    with pytest.raises(keypair.NotPem):
        keypair.spki_fingerprint(data)


def test_key_given_where_certificate_is_expected_raises_not_pem(keys):
    key_pem = _private_pem(keys["RSA_2048"], PKCS8)
    with pytest.raises(keypair.NotPem, match="CERTIFICATE"):
        keypair.check_pair(key_pem, key_pem, cert_name="server.crt")


def test_truncated_der_raises_not_pem(keys):
    der = keys["RSA_2048"].private_bytes(
        serialization.Encoding.DER, PKCS8, serialization.NoEncryption()
    )
    pem = b"-----BEGIN PRIVATE KEY-----\n" + base64.encodebytes(der[:200])
    pem += b"-----END PRIVATE KEY-----\n"
    with pytest.raises(keypair.NotPem):
        keypair.spki_fingerprint(pem)


def test_sec1_key_without_public_key_raises_unsupported_key(keys):
    der = keys["EC_prime256v1"].private_bytes(
        serialization.Encoding.DER, TRADITIONAL, serialization.NoEncryption()
    )
    # Rebuild ECPrivateKey with only version, privateKey and [0] parameters.
    stripped = _strip_ec_public_key(der)
    pem = b"-----BEGIN EC PRIVATE KEY-----\n" + base64.encodebytes(stripped)
    pem += b"-----END EC PRIVATE KEY-----\n"
    with pytest.raises(keypair.UnsupportedKey, match="public key"):
        keypair.spki_fingerprint(pem)


def _strip_ec_public_key(der: bytes) -> bytes:
    sequence = keypair.parse_der(der, 0x30)
    kept = b"".join(item.raw for item in keypair.der_children(sequence) if item.tag != 0xA1)
    return keypair._encode(0x30, kept)


def test_fingerprint_uses_the_first_certificate_of_a_chain(keys):
    leaf, other = _self_signed(keys["RSA_2048"]), _self_signed(keys["EC_secp384r1"])
    got = keypair.spki_fingerprint(leaf + other)
    assert got == _cryptography_fingerprint(keys["RSA_2048"])


def test_module_runs_on_python_3_9_syntax():
    """servers/ ships to Amazon Linux 2023 (Python 3.9): vermin must find nothing newer."""
    import shutil
    import sys
    from pathlib import Path

    vermin = Path(sys.executable).with_name("vermin")
    if not vermin.exists():
        vermin = shutil.which("vermin")
    path = Path(keypair.__file__)
    result = subprocess.run(
        [str(vermin), "-t=3.9-", "--no-tips", "--violations", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"vermin reported:\n{result.stdout}{result.stderr}"


def test_encrypted_key_message_names_the_file_and_how_to_decrypt_it(keys):
    key = keys["EC_secp384r1"]
    pem = _private_pem(key, PKCS8, serialization.BestAvailableEncryption(b"secret"))
    with pytest.raises(keypair.EncryptedKey) as caught:
        keypair.check_pair(_self_signed(key), pem, key_name="server.key")
    assert "openssl pkey -in server.key -out server.key.plain" in str(caught.value)


def test_str_input_is_read_like_bytes(keys):
    key = keys["RSA_2048"]
    cert_text = _self_signed(key).decode()
    key_text = _private_pem(key, TRADITIONAL).decode()
    keypair.check_pair(cert_text, key_text)
    assert keypair.spki_fingerprint(cert_text) == _cryptography_fingerprint(key)
