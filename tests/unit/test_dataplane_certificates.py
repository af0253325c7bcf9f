"""The data plane's certificate choice by SNI, its TLS contexts, and what it reads from ACM."""

import dataclasses
import datetime
import ssl
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from infra import certs
from infra.policies import get_policy
from infra.sandbox.certificates import (
    CertificateGone,
    CertificateSource,
    certificate_from_pem,
    matches_name,
    select_certificate,
    split_pem,
    strip_appended,
)
from infra.sandbox.config import (
    AccessLogSettings,
    CertificateVersion,
    Listener,
    LoadBalancerConfig,
)
from infra.sandbox.dataplane import TlsBuilder
from infra.sandbox.tls import ListenerTls, NoServableCertificate, alert_number, alpn_protocols
from infra.sandbox.tls import _key_algorithms_offered  # the offer check, tested on its own

pytestmark = pytest.mark.unit

_NOW = datetime.datetime.now(datetime.timezone.utc)


_KEYS: dict = {}


def _private_key(key: str, bits: int):
    # One key per type and size for the whole module: RSA generation dominates its run time,
    # and the choice rules look at the certificate, not at which key it carries.
    if (key, bits) not in _KEYS:
        _KEYS[key, bits] = (
            rsa.generate_private_key(65537, bits) if key == "RSA"
            else ec.generate_private_key({256: ec.SECP256R1(), 384: ec.SECP384R1()}[bits])
        )
    return _KEYS[key, bits]


def _served(arn, names, *, key="RSA", bits=2048, digest=hashes.SHA256, days=30, with_key=True):
    """A self-signed certificate for `names` with the given key, signature hash and life."""
    private = _private_key(key, bits)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - datetime.timedelta(days=1))
        .not_valid_after(_NOW + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(private, digest())
    )
    key_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate_from_pem(arn, cert.public_bytes(serialization.Encoding.PEM), b"",
                                key_pem if with_key else None)


@pytest.fixture(scope="module")
def default():
    return _served("arn:default", ["default.test"])


@pytest.mark.parametrize("server_name, pattern, expected", [
    ("a.example.test", "*.example.test", True),
    ("A.Example.Test.", "*.example.test", True),
    ("example.test", "*.example.test", False),
    ("a.b.example.test", "*.example.test", False),
    ("example.test", "example.test", True),
    ("other.test", "example.test", False),
])
def test_wildcard_covers_exactly_one_label(server_name, pattern, expected):
    assert matches_name(server_name, pattern) is expected, (
        f"{pattern} covering {server_name}: expected {expected}"
    )


def test_no_sni_or_unmatched_name_gets_the_default(default):
    listed = [_served("arn:other", ["other.test"])]
    for name in (None, "", "nothing.test"):
        chosen = select_certificate(name, default, listed)
        assert chosen.arn == "arn:default", f"SNI {name!r}: expected the default, got {chosen.arn}"


def test_sni_match_in_the_list_is_served(default):
    listed = [_served("arn:other", ["other.test"]), _served("arn:wild", ["*.wild.test"])]
    assert select_certificate("other.test", default, listed).arn == "arn:other"
    assert select_certificate("x.wild.test", default, listed).arn == "arn:wild"


def test_among_matches_ecdsa_beats_rsa(default):
    listed = [_served("arn:rsa", ["both.test"], bits=3072, digest=hashes.SHA512),
              _served("arn:ec", ["both.test"], key="EC", bits=256)]
    chosen = select_certificate("both.test", default, listed)
    assert chosen.arn == "arn:ec", f"expected the ECDSA certificate, got {chosen.arn}"


def test_among_matches_stronger_hash_then_longer_key_then_validity(default):
    by_hash = [_served("arn:256", ["h.test"], bits=3072), _served("arn:384", ["h.test"],
                                                                  digest=hashes.SHA384)]
    assert select_certificate("h.test", default, by_hash).arn == "arn:384"
    by_key = [_served("arn:2048", ["k.test"]), _served("arn:3072", ["k.test"], bits=3072)]
    assert select_certificate("k.test", default, by_key).arn == "arn:3072"
    by_life = [_served("arn:short", ["v.test"], days=10), _served("arn:long", ["v.test"], days=90)]
    assert select_certificate("v.test", default, by_life).arn == "arn:long"


def test_a_client_that_cannot_use_ecdsa_gets_the_rsa_match(default):
    listed = [_served("arn:rsa", ["both.test"]), _served("arn:ec", ["both.test"], key="EC",
                                                          bits=256)]
    chosen = select_certificate("both.test", default, listed, lambda algorithm: algorithm == "RSA")
    assert chosen.arn == "arn:rsa", f"expected the RSA certificate, got {chosen.arn}"


def test_equal_matches_keep_the_default():
    first = _served("arn:default", ["same.test"])
    second = _served("arn:second", ["same.test"])
    assert select_certificate("same.test", first, [second]).arn == "arn:default"


def _hello(server_name, suites=(0x1301, 0xC02F), max_version=0x0304):
    return SimpleNamespace(server_name=server_name, cipher_suites=suites, max_version=max_version)


def test_listener_without_key_for_default_refuses(default):
    keyless = _served("arn:keyless", ["default.test"], with_key=False)
    tls = ListenerTls.build(get_policy("ELBSecurityPolicy-2016-08"), (), "arn:keyless",
                            {"arn:keyless": keyless}, {})
    with pytest.raises(NoServableCertificate, match="no private key"):
        tls.choose(_hello(None))


def test_listed_certificate_without_key_is_left_out(default):
    keyless = _served("arn:keyless", ["sni.test"], with_key=False)
    tls = ListenerTls.build(get_policy("ELBSecurityPolicy-2016-08"), (), "arn:default",
                            {"arn:default": default, "arn:keyless": keyless}, {})
    arn, context = tls.choose(_hello("sni.test"))
    assert arn == "arn:default", f"expected the default instead of the keyless match, got {arn}"
    assert isinstance(context, ssl.SSLContext)
    assert "arn:keyless" in tls.unservable


def test_rsa_only_tls12_offer_skips_the_ecdsa_match(default):
    ecdsa = _served("arn:ec", ["both.test"], key="EC", bits=256)
    rsa_cert = _served("arn:rsa", ["both.test"])
    tls = ListenerTls.build(get_policy("ELBSecurityPolicy-TLS13-1-2-2021-06"), (), "arn:default",
                            {"arn:default": default, "arn:ec": ecdsa, "arn:rsa": rsa_cert}, {})
    assert tls.choose(_hello("both.test"))[0] == "arn:ec"
    rsa_only = _hello("both.test", suites=(0xC02F, 0x009C), max_version=0x0303)
    assert tls.choose(rsa_only)[0] == "arn:rsa"


# IANA codes used in the offers below.
_TLS_AES_128 = 0x1301
_ECDHE_ECDSA_AES128_GCM = 0xC02B
_ECDHE_ECDSA_CHACHA20 = 0xCCA9  # in OpenSSL, in no ELB policy
_ECDHE_RSA_AES128_GCM = 0xC02F
_RENEGOTIATION_SCSV = 0x00FF
_GREASE = 0x0A0A


@pytest.mark.parametrize("policy, suites, max_version, expected", [
    # TLS 1.3 suites, the SCSV and GREASE say nothing about TLS 1.2 under a 1.2-only policy.
    ("ELBSecurityPolicy-FS-1-2-Res-2020-10",
     (_GREASE, _TLS_AES_128, _ECDHE_ECDSA_AES128_GCM, _RENEGOTIATION_SCSV), 0x0304,
     {"RSA": False, "EC": True}),
    # The same offer under a TLS 1.3 policy will be TLS 1.3: either key does.
    ("ELBSecurityPolicy-TLS13-1-2-2021-06",
     (_GREASE, _TLS_AES_128, _ECDHE_ECDSA_AES128_GCM, _RENEGOTIATION_SCSV), 0x0304,
     {"RSA": True, "EC": True}),
    # TLS 1.3 suites from a client that stops at TLS 1.2 count for nothing.
    ("ELBSecurityPolicy-TLS13-1-2-2021-06", (_TLS_AES_128, _ECDHE_RSA_AES128_GCM), 0x0303,
     {"RSA": True, "EC": False}),
    # An ECDSA suite outside the policy cannot be negotiated.
    ("ELBSecurityPolicy-2016-08", (_ECDHE_ECDSA_CHACHA20, _ECDHE_RSA_AES128_GCM), 0x0303,
     {"RSA": True, "EC": False}),
])
def test_only_the_policys_suites_say_which_keys_a_client_can_use(policy, suites, max_version,
                                                                 expected):
    accepts = _key_algorithms_offered(_hello("x.test", suites, max_version), get_policy(policy))
    got = {algorithm: accepts(algorithm) for algorithm in expected}
    assert got == expected, f"{policy} with suites {[hex(s) for s in suites]}: expected " \
                            f"{expected}, got {got}"


def test_ecdsa_suite_outside_the_policy_gets_the_rsa_match(default):
    ecdsa = _served("arn:ec", ["both.test"], key="EC", bits=256)
    rsa_cert = _served("arn:rsa", ["both.test"])
    tls = ListenerTls.build(get_policy("ELBSecurityPolicy-2016-08"), (), "arn:default",
                            {"arn:default": default, "arn:ec": ecdsa, "arn:rsa": rsa_cert}, {})
    offer = _hello("both.test", (_ECDHE_ECDSA_CHACHA20, _ECDHE_RSA_AES128_GCM), 0x0303)
    chosen = tls.choose(offer)[0]
    assert chosen == "arn:rsa", f"expected the RSA certificate the offer can use, got {chosen}"


def _client(security_level=1, **versions):
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    client.set_ciphers(f"DEFAULT:@SECLEVEL={security_level}")
    for name, version in versions.items():
        setattr(client, name, version)
    return client


def _negotiated(server_context, client_context):
    """(protocol, cipher) a handshake over memory BIOs agrees on; raises the server's
    SSLError."""
    client, error = _memory_handshake(server_context, client_context)
    if error is not None:
        raise error
    return client.version(), client.cipher() and client.cipher()[0]


@pytest.mark.parametrize("policy, versions, expected", [
    ("ELBSecurityPolicy-FS-1-2-Res-2020-10", {}, ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")),
    ("ELBSecurityPolicy-TLS13-1-2-2021-06", {"maximum_version": ssl.TLSVersion.TLSv1_2},
     ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")),
    ("ELBSecurityPolicy-TLS13-1-3-2021-06", {}, ("TLSv1.3", "TLS_AES_128_GCM_SHA256")),
])
def test_rsa_1024_certificate_is_served_under_modern_policies(policy, versions, expected):
    # The NLB takes RSA 1024; OpenSSL's default security level refuses it (EE_KEY_TOO_SMALL).
    small = _served("arn:1024", ["default.test"], bits=1024)
    tls = ListenerTls.build(get_policy(policy), (), "arn:1024", {"arn:1024": small}, {})
    assert tls.unservable == {}, f"expected RSA 1024 servable under {policy}: {tls.unservable}"
    got = _negotiated(tls.contexts["arn:1024"], _client(**versions))
    assert got == expected, f"{policy} with an RSA 1024 key: expected {expected}, got {got}"


def test_security_level_stays_at_the_default_for_keys_that_need_no_less(default):
    policy = get_policy("ELBSecurityPolicy-TLS13-1-2-2021-06")
    tls = ListenerTls.build(policy, (), "arn:default", {"arn:default": default}, {})
    level = tls.contexts["arn:default"].security_level
    assert level == 2, f"an RSA 2048 certificate: expected OpenSSL's level 2, got {level}"


def _with_foreign_key(cert):
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return dataclasses.replace(cert, key_pem=other)


def test_certificate_openssl_refuses_is_left_out_and_the_listener_still_serves(default):
    refused = _with_foreign_key(_served("arn:refused", ["sni.test"]))
    tls = ListenerTls.build(get_policy("ELBSecurityPolicy-TLS13-1-2-2021-06"), (),
                            "arn:default", {"arn:default": default, "arn:refused": refused}, {})
    assert "OpenSSL refuses" in tls.unservable.get("arn:refused", ""), tls.unservable
    arn, _ = tls.choose(_hello("sni.test"))
    assert arn == "arn:default", f"expected the default instead of the refused match, got {arn}"


def test_default_certificate_openssl_refuses_makes_the_listener_refuse_at_handshake(default):
    refused = _with_foreign_key(default)
    tls = ListenerTls.build(get_policy("ELBSecurityPolicy-2016-08"), (), "arn:default",
                            {"arn:default": refused}, {})
    with pytest.raises(NoServableCertificate, match="OpenSSL refuses"):
        tls.choose(_hello(None))


class _Source:
    """A CertificateSource stand-in: ARN -> ServedCertificate."""

    def __init__(self, certificates):
        self.certificates = certificates

    def load(self, arn):
        return self.certificates[arn]


def _config(policy, certificate_arns=()):
    listener = Listener(
        arn="arn:listener/1", port=443, protocol="TLS", ssl_policy=policy, alpn_policy=None,
        default_certificate_arn="arn:default", certificate_arns=tuple(certificate_arns),
        target_group_arn=None,
    )
    versions = tuple(CertificateVersion(arn, "1") for arn in ("arn:default",
                                                                *certificate_arns))
    return LoadBalancerConfig(
        arn="arn:lb/1", name="lb", dns_name="lb.test", listeners=(listener,), target_groups=(),
        access_logs=AccessLogSettings(False, "", ""), certificates=versions,
    )


def test_tls_builder_keeps_a_listener_with_a_refused_certificate(default):
    refused = _with_foreign_key(_served("arn:refused", ["sni.test"]))
    builder = TlsBuilder(_Source({"arn:default": default, "arn:refused": refused}))
    built = builder.build(_config("ELBSecurityPolicy-2016-08", ["arn:refused"]))
    assert "arn:listener/1" in built, "expected the listener built despite one refused certificate"
    assert set(built["arn:listener/1"].contexts) == {"arn:default"}, built["arn:listener/1"]


def test_tls_builder_keeps_the_previous_settings_when_a_change_cannot_be_served(default):
    builder = TlsBuilder(_Source({"arn:default": default}))
    before = builder.build(_config("ELBSecurityPolicy-2016-08"))["arn:listener/1"]
    after = builder.build(_config("ELBSecurityPolicy-Unknown"))
    assert after.get("arn:listener/1") is before, (
        f"an unknown policy: expected the listener's previous TLS kept, got {after}")


def test_alpn_policies_offer_the_nlb_lists():
    assert alpn_protocols(None) == ()
    assert alpn_protocols("HTTP2Preferred") == ("h2", "http/1.1", "http/1.0")
    assert alpn_protocols("HTTP2Optional") == ("http/1.1", "http/1.0", "h2")
    with pytest.raises(ValueError, match="HTTP2Only"):
        alpn_protocols("HTTP3")


def _memory_handshake(server_context, client_context):
    """A handshake over memory BIOs: the client's SSLObject, and the server's SSLError or
    None."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    client = client_context.wrap_bio(c_in, c_out, server_hostname="default.test")
    for _ in range(6):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as error:
                if side is server:
                    return client, error
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    return client, None


def test_alert_number_reads_the_alert_the_client_sent(default, tmp_path):
    tls = ListenerTls.build(get_policy("ELBSecurityPolicy-2016-08"), (), "arn:default",
                            {"arn:default": default}, {})
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    other = _served("arn:x", ["other.test"])
    (tmp_path / "ca.pem").write_bytes(other.leaf_pem)
    client.load_verify_locations(tmp_path / "ca.pem")  # not the server's issuer: unknown_ca
    _, error = _memory_handshake(tls.contexts["arn:default"], client)
    assert error is not None, "expected the server to see the client's alert"
    assert alert_number(error) == 48, f"expected unknown_ca (48), got {alert_number(error)}"


def test_strip_appended_removes_only_moto_ca():
    from moto.acm.models import AWS_ROOT_CA

    chain = certs.generate_chain(["chain.test"]).chain_pem
    stripped = strip_appended(chain + b"\n" + AWS_ROOT_CA + b"\n", [AWS_ROOT_CA])
    assert split_pem(stripped) == split_pem(chain), "expected exactly the imported chain back"


def test_certificate_source_reads_imported_chain_and_key(moto_backends):
    import boto3

    acm = boto3.client("acm", region_name="eu-west-1")
    chain = certs.generate_chain(["source.test"])
    arn = acm.import_certificate(Certificate=chain.leaf_pem, PrivateKey=chain.key_pem,
                                 CertificateChain=chain.chain_pem)["CertificateArn"]
    source = CertificateSource(acm, "123456789012", "eu-west-1", lambda pem: None)
    served = source.load(arn)
    assert split_pem(served.chain_pem) == split_pem(chain.chain_pem), (
        "expected the chain as imported, without moto's Amazon CA"
    )
    assert served.key_pem == chain.key_pem and served.dns_names == ("source.test",)
    acm.delete_certificate(CertificateArn=arn)
    with pytest.raises(CertificateGone, match=arn):
        source.load(arn)


def test_without_moto_in_process_the_key_comes_from_the_keystore(moto_backends, monkeypatch,
                                                                  tmp_path):
    import boto3

    from infra.keystore import KeyStore
    from infra.sandbox import certificates as module

    monkeypatch.setattr(module, "_moto_bundle", lambda account, region, arn: None)
    acm = boto3.client("acm", region_name="eu-west-1")
    chain = certs.generate_chain(["keystore.test"])
    arn = acm.import_certificate(Certificate=chain.leaf_pem, PrivateKey=chain.key_pem,
                                 CertificateChain=chain.chain_pem)["CertificateArn"]
    store = KeyStore(tmp_path / "keys")
    source = CertificateSource(acm, "123456789012", "eu-west-1", store.key_for_certificate)
    assert not source.load(arn).has_key, "expected no key before the keystore holds it"
    store.put(chain.key_pem)
    served = source.load(arn)
    assert served.key_pem == chain.key_pem, "expected the key found by public-key fingerprint"
    assert split_pem(served.chain_pem) == split_pem(chain.chain_pem), (
        "expected get_certificate's chain without moto's Amazon CA"
    )
