"""Tests of infra.certs: the test CA's chains verify strictly, files are private, keys match."""

import datetime
import hashlib
import os
import secrets
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from infra import certs

pytestmark = pytest.mark.unit

DNS_NAMES = ("app.nlb-suite.test", "*.api.nlb-suite.test")


@pytest.fixture(scope="module")
def chains():
    """One chain per generated key type, made once for the module."""
    return {key_type: certs.generate_chain(DNS_NAMES, key_type)
            for key_type in certs.GENERATED_KEY_TYPES}


def _load_all(pem: bytes):
    return x509.load_pem_x509_certificates(pem)


def _verify(chain: certs.CertificateChain, dns_name: str):
    store = Store(_load_all(chain.ca_bundle_pem))
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(dns_name))
    leaf = x509.load_pem_x509_certificate(chain.leaf_pem)
    return verifier.verify(leaf, _load_all(chain.chain_pem))


@pytest.mark.parametrize("key_type", certs.GENERATED_KEY_TYPES)
@pytest.mark.parametrize("dns_name", ["app.nlb-suite.test", "v1.api.nlb-suite.test"])
def test_chain_verifies_with_cryptography_server_verifier(chains, key_type, dns_name):
    verified = _verify(chains[key_type], dns_name)
    subjects = [cert.subject.rfc4514_string() for cert in verified]
    assert len(verified) == 3, f"expected leaf, intermediate and root, got {subjects}"


def test_verifier_refuses_a_name_the_leaf_does_not_carry(chains):
    with pytest.raises(VerificationError):
        _verify(chains["RSA_2048"], "other.nlb-suite.test")


@pytest.mark.parametrize("key_type", certs.GENERATED_KEY_TYPES)
def test_chain_verifies_with_openssl_strict_server_purpose(chains, key_type, tmp_path):
    files = chains[key_type].write(tmp_path)
    result = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", "sslserver",
         "-verify_hostname", "app.nlb-suite.test",
         "-CAfile", str(files.ca_bundle), "-untrusted", str(files.chain_file),
         str(files.cert_file)],
        capture_output=True, text=True, timeout=20,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), (
        f"openssl verify: expected OK, got rc={result.returncode}\n{result.stdout}{result.stderr}"
    )


def test_openssl_refuses_the_leaf_without_the_intermediate(chains, tmp_path):
    files = chains["RSA_2048"].write(tmp_path)
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(files.ca_bundle), str(files.cert_file)],
        capture_output=True, text=True, timeout=20,
    )
    assert result.returncode != 0, f"expected a failure, got {result.stdout}"
    assert "unable to get local issuer certificate" in result.stdout + result.stderr


@pytest.mark.parametrize("key_type", certs.GENERATED_KEY_TYPES)
def test_key_type_is_reported_in_acm_spelling(chains, key_type):
    assert certs.key_type_of(chains[key_type].leaf_pem) == key_type
    assert chains[key_type].key_type == key_type
    expected_family = key_type.split("_")[0]
    assert certs.key_algorithm_of(chains[key_type].leaf_pem) == expected_family


def _rsa_public_key(bits: int):
    """An RSA public key of exactly bits bits without the cost of generating a private key.

    key_type_of reads only the size, so any odd modulus with the top bit set will do.
    """
    modulus = (1 << (bits - 1)) | secrets.randbits(bits - 1) | 1
    return rsa.RSAPublicNumbers(65537, modulus).public_key()


@pytest.mark.parametrize(
    "make_public_key, expected",
    [
        (lambda: _rsa_public_key(1024), "RSA_1024"),
        (lambda: _rsa_public_key(4096), "RSA_4096"),
        (lambda: ec.generate_private_key(ec.SECP256K1()).public_key(), "EC_secp256k1"),
        (lambda: ec.generate_private_key(ec.SECP521R1()).public_key(), "EC_secp521r1"),
    ],
    ids=["rsa1024", "rsa4096", "secp256k1", "secp521r1"],
)
def test_key_type_of_names_sizes_and_curves_it_cannot_generate(make_public_key, expected):
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(make_public_key()).serial_number(1).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1)).sign(issuer_key, hashes.SHA256())
    )
    got = certs.key_type_of(cert.public_bytes(serialization.Encoding.PEM))
    assert got == expected, f"expected {expected}, got {got}"
    assert (expected in certs.NLB_KEY_TYPES) == (expected in ("RSA_1024", "EC_secp521r1"))


def test_leaf_extensions_satisfy_strict_rfc5280_profiles(chains):
    for key_type, chain in chains.items():
        leaf = x509.load_pem_x509_certificate(chain.leaf_pem)
        extensions = leaf.extensions
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert not san.critical, f"{key_type}: a critical SAN with a subject is refused"
        assert san.value.get_values_for_type(x509.DNSName) == list(DNS_NAMES)
        constraints = extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical and constraints.value.ca is False
        usage = extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical and usage.value.digital_signature
        assert usage.value.key_encipherment == key_type.startswith("RSA"), key_type
        eku = extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]
        assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DNS_NAMES[0]


def test_ca_extensions_carry_path_lengths_and_key_identifiers(chains):
    chain = chains["EC_prime256v1"]
    root = x509.load_pem_x509_certificate(chain.ca_bundle_pem)
    (intermediate,) = _load_all(chain.chain_pem)
    leaf = x509.load_pem_x509_certificate(chain.leaf_pem)
    for cert, path_length in ((root, 1), (intermediate, 0)):
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical and constraints.value.ca
        assert constraints.value.path_length == path_length, cert.subject.rfc4514_string()
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    for child, parent in ((leaf, intermediate), (intermediate, root)):
        aki = child.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = parent.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == ski.digest
        assert child.issuer == parent.subject


def test_validity_starts_in_the_past_and_lasts_a_few_days(chains):
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf = x509.load_pem_x509_certificate(chains["RSA_2048"].leaf_pem)
    assert leaf.not_valid_before_utc <= now - datetime.timedelta(minutes=30)
    lifetime = leaf.not_valid_after_utc - now
    assert datetime.timedelta(days=2) <= lifetime <= datetime.timedelta(days=10), lifetime


def test_serials_are_random_and_chains_independent(chains):
    serials = set()
    for chain in chains.values():
        for pem in (chain.leaf_pem, chain.chain_pem, chain.ca_bundle_pem):
            serials.add(x509.load_pem_x509_certificate(pem).serial_number)
    assert len(serials) == 3 * len(chains), "every certificate gets its own serial"
    assert all(serial.bit_length() > 100 for serial in serials)
    roots = {chain.ca_bundle_pem for chain in chains.values()}
    assert len(roots) == len(chains), "each generate_chain call makes a fresh root"


def test_write_creates_private_directory_and_key_file(chains, tmp_path):
    target = tmp_path / "nested" / "certs"
    files = chains["RSA_2048"].write(target)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(files.key_file).st_mode) == 0o600
    for path in (files.cert_file, files.key_file, files.chain_file, files.ca_bundle):
        assert path.is_absolute() and path.parent == target
    assert files.key_file.read_bytes() == chains["RSA_2048"].key_pem
    assert files.chain_file.read_bytes() == chains["RSA_2048"].chain_pem
    assert b"PRIVATE KEY" not in files.cert_file.read_bytes()


def test_write_tightens_an_existing_world_readable_key_file(chains, tmp_path):
    key_file = tmp_path / "server-key.pem"
    key_file.write_bytes(b"old")
    os.chmod(key_file, 0o644)
    chains["EC_secp384r1"].write(tmp_path)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert key_file.read_bytes() == chains["EC_secp384r1"].key_pem


def test_repr_never_shows_the_private_key(chains):
    text = repr(chains["RSA_2048"])
    assert "PRIVATE" not in text and "BEGIN" not in text, text


@pytest.mark.parametrize("key_type", certs.GENERATED_KEY_TYPES)
def test_key_matches_its_own_certificate(chains, key_type):
    certs.check_key_matches(chains[key_type].leaf_pem, chains[key_type].key_pem)


def test_key_from_another_chain_is_a_mismatch_naming_both_fingerprints(chains):
    leaf, foreign = chains["RSA_2048"], chains["RSA_3072"]
    with pytest.raises(certs.KeyMismatchError) as caught:
        certs.check_key_matches(leaf.leaf_pem, foreign.key_pem)
    assert isinstance(caught.value, certs.CertificateError)
    assert isinstance(caught.value, ValueError)
    expected = (certs.public_key_fingerprint(leaf.leaf_pem),
                certs.public_key_fingerprint(foreign.key_pem))
    assert (caught.value.cert_fingerprint, caught.value.key_fingerprint) == expected
    assert expected[0] in str(caught.value) and expected[1] in str(caught.value)


def test_unreadable_key_is_a_certificate_error_not_a_mismatch(chains):
    with pytest.raises(certs.CertificateError) as caught:
        certs.check_key_matches(chains["RSA_2048"].leaf_pem, b"garbage")
    assert not isinstance(caught.value, certs.KeyMismatchError)


def test_public_key_fingerprint_of_certificate_equals_that_of_its_key(chains):
    for chain in chains.values():
        leaf = x509.load_pem_x509_certificate(chain.leaf_pem)
        der = leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        expected = hashlib.sha256(der).hexdigest()
        assert certs.public_key_fingerprint(chain.leaf_pem) == expected
        assert certs.public_key_fingerprint(chain.key_pem) == expected


def test_unsupported_key_type_names_the_accepted_ones():
    with pytest.raises(certs.UnsupportedKeyTypeError) as caught:
        certs.generate_chain(["a.test"], "RSA_4096")
    message = str(caught.value)
    assert "'RSA_4096'" in message and all(kt in message for kt in certs.GENERATED_KEY_TYPES)


@pytest.mark.parametrize("bad", [[], ["bad name.test"], ["ünïcode.test"], ["a..test"], [""]])
def test_bad_dns_names_are_refused_before_any_key_is_made(bad):
    with pytest.raises(certs.CertificateError):
        certs.generate_chain(bad)


def test_intermediate_may_not_sign_another_ca():
    intermediate = certs.CertificateAuthority.root().create_intermediate()
    with pytest.raises(certs.CertificateError, match="path length 0"):
        intermediate.create_intermediate()


def test_long_first_name_leaves_the_common_name_out():
    long_name = ("a" * 60) + ".nlb-suite.test"
    chain = certs.generate_chain([long_name], "EC_prime256v1")
    leaf = x509.load_pem_x509_certificate(chain.leaf_pem)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    assert len(_verify(chain, long_name)) == 3


@pytest.mark.parametrize("key_type", ["RSA_2048", "EC_prime256v1"])
def test_acm_import_under_moto_reports_the_same_key_algorithm(chains, key_type, monkeypatch):
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_SESSION_TOKEN", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    import boto3
    from moto import mock_aws

    chain = chains[key_type]
    with mock_aws():
        acm = boto3.client("acm", region_name="us-east-1")
        arn = acm.import_certificate(
            Certificate=chain.leaf_pem, PrivateKey=chain.key_pem,
            CertificateChain=chain.chain_pem,
        )["CertificateArn"]
        described = acm.describe_certificate(CertificateArn=arn)["Certificate"]
    assert described["KeyAlgorithm"] == key_type, described["KeyAlgorithm"]


def test_read_pem_file_reads_a_regular_file_up_to_its_limit(tmp_path):
    path = tmp_path / "f.pem"
    path.write_bytes(b"x" * 10)

    assert certs.read_pem_file(path, limit=10) == b"x" * 10
    with pytest.raises(certs.CertificateFileError) as raised:
        certs.read_pem_file(path, limit=9)
    assert str(raised.value) == (f"{path} is larger than 9 bytes; accepted a PEM file of at "
                                 "most 9 bytes")


@pytest.mark.parametrize("path, kind", [("/dev/zero", "not a regular file"),
                                        ("/", "a directory")])
def test_read_pem_file_refuses_what_is_not_a_regular_file(path, kind):
    with pytest.raises(certs.CertificateFileError) as raised:
        certs.read_pem_file(path)
    assert str(raised.value) == f"{path} is {kind}; accepted a PEM file"


def test_load_certificates_returns_a_chain_in_order(chains):
    chain = chains["RSA_2048"]

    loaded = certs.load_certificates(chain.leaf_pem + chain.chain_pem)

    assert loaded == _load_all(chain.leaf_pem + chain.chain_pem) and len(loaded) == 2


def test_load_certificates_names_a_private_key_block_without_showing_it(chains):
    chain = chains["EC_prime256v1"]
    with pytest.raises(certs.CertificateError) as raised:
        certs.load_certificates(chain.chain_pem + chain.key_pem)
    message = str(raised.value)
    assert message == "holds PRIVATE KEY blocks; accepted CERTIFICATE blocks only", message


def test_load_certificates_of_a_bundle_skips_text_between_certificates(chains):
    chain = chains["RSA_2048"]
    bundle = b"# a comment\n" + chain.ca_bundle_pem + b"subject=...\n"

    assert certs.load_certificates(bundle, only_certificates=False) == _load_all(
        chain.ca_bundle_pem)
    with pytest.raises(certs.CertificateError, match="outside PEM blocks"):
        certs.load_certificates(bundle)


@pytest.mark.parametrize("name, reason", [
    ("", "it is empty"),
    ("*.*.a", "label '*': a wildcard is accepted only as the whole first label"),
    ("a*.test", "label 'a*': a wildcard is accepted only as the whole first label"),
    ("*", "a wildcard needs a name below it"),
    ("a.test.", "an empty label"),
    ("-a.test", "label '-a' holds other characters or starts or ends with '-'"),
    ("a" * 64 + ".test", "is 64 characters long"),
    ("b." * 127, "it is 254 characters long"),
])
def test_dns_name_problem_says_why_a_name_is_refused(name, reason):
    problem = certs.dns_name_problem(name)
    assert problem is not None and reason in problem, f"expected {reason!r}; got {problem!r}"
