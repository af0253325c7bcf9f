"""Tests of the TLS probe and scan against local ssl servers configured with known settings."""

import socket
import ssl
import threading

import pytest
from cryptography import x509
from OpenSSL import SSL

from fixtures import tls_probe, tls_scan
from fixtures.tls_scan import Finding
from infra import certs, policies
from tests.unit.tls_server import TlsServer, policy_server, server_context

pytestmark = pytest.mark.unit

HOST = "127.0.0.1"
# What the "known" server is told to allow, in its preference order.
KNOWN_CIPHERS = ("ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA", "AES256-SHA")
SHA1_CBC = ("ECDHE-RSA-AES128-SHA", "AES256-SHA")  # the ones TLS 1.0/1.1 can negotiate


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("probe")


@pytest.fixture(scope="module")
def rsa_chain():
    return certs.generate_chain(["probe.test", "*.probe.test"], "RSA_2048")


@pytest.fixture(scope="module")
def ec_chain():
    return certs.generate_chain(["other.test"], "EC_prime256v1")


@pytest.fixture(scope="module")
def known_server(rsa_chain, workdir):
    """TLS 1.1 to 1.2, three ciphers, ALPN h2 then http/1.1."""
    context = server_context(
        rsa_chain, workdir,
        min_version=ssl.TLSVersion.TLSv1_1, max_version=ssl.TLSVersion.TLSv1_2,
        ciphers=":".join(KNOWN_CIPHERS) + ":@SECLEVEL=0", alpn=["h2", "http/1.1"],
    )
    with TlsServer(context) as server:
        yield server


@pytest.fixture(scope="module")
def sni_server(rsa_chain, ec_chain, workdir):
    """RSA certificate by default, the EC one for other.test; TLS 1.2 and 1.3."""
    default = server_context(rsa_chain, workdir)
    other = server_context(ec_chain, workdir)
    with TlsServer(default, sni={"other.test": other}) as server:
        yield server


def _bundle(chain, workdir, name):
    return chain.write(workdir, name=name).ca_bundle


def test_default_offer_gets_the_servers_first_cipher_at_its_highest_version(known_server):
    result = tls_probe.handshake(HOST, known_server.port, "probe.test")
    assert (result.protocol, result.cipher) == ("TLSv1.2", KNOWN_CIPHERS[0])
    assert (result.key_type, result.key_bits) == ("RSA", 2048)
    assert known_server.saw(("TLSv1.2", KNOWN_CIPHERS[0])), "the server agrees"


def test_lowest_allowed_version_negotiates_a_sha1_suite(known_server):
    result = tls_probe.handshake(HOST, known_server.port, min_version="TLSv1.1",
                                 max_version=ssl.TLSVersion.TLSv1_1)
    assert (result.protocol, result.cipher) == ("TLSv1.1", SHA1_CBC[0])


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1.3"])
def test_version_outside_the_range_is_refused_with_protocol_version(known_server, version):
    with pytest.raises(tls_probe.HandshakeRefused) as caught:
        tls_probe.handshake(HOST, known_server.port, min_version=version, max_version=version)
    refused = caught.value
    assert (refused.alert, refused.alert_number, refused.received) == ("protocol_version", 70, True)
    assert "protocol_version (70)" in str(refused)


def test_cipher_not_allowed_is_refused_with_handshake_failure(known_server):
    with pytest.raises(tls_probe.HandshakeRefused) as caught:
        tls_probe.handshake(HOST, known_server.port, ciphers=["AES128-GCM-SHA256"])
    assert (caught.value.alert, caught.value.alert_number) == ("handshake_failure", 40)


def test_chain_is_reported_as_sent_leaf_first(known_server, rsa_chain):
    result = tls_probe.handshake(HOST, known_server.port, "probe.test")
    leaf = x509.load_pem_x509_certificate(rsa_chain.leaf_pem)
    (intermediate,) = x509.load_pem_x509_certificates(rsa_chain.chain_pem)
    root = x509.load_pem_x509_certificate(rsa_chain.ca_bundle_pem)
    expected = (
        tls_probe.ChainEntry(leaf.subject.rfc4514_string(), intermediate.subject.rfc4514_string()),
        tls_probe.ChainEntry(intermediate.subject.rfc4514_string(), root.subject.rfc4514_string()),
    )
    assert result.chain == expected
    assert result.leaf_fingerprint == certs.public_key_fingerprint(rsa_chain.leaf_pem)


@pytest.mark.parametrize("server_name", ["probe.test", "api.probe.test"])
def test_chain_verifies_against_its_bundle(known_server, rsa_chain, workdir, server_name):
    bundle = _bundle(rsa_chain, workdir, "rsa")
    result = tls_probe.handshake(HOST, known_server.port, server_name, ca_bundle=bundle)
    assert (result.verified, result.verify_error) == (True, None)


def test_chain_fails_against_another_bundle_with_the_openssl_error(known_server, ec_chain, workdir):
    bundle = _bundle(ec_chain, workdir, "foreign")
    result = tls_probe.handshake(HOST, known_server.port, "probe.test", ca_bundle=bundle)
    assert result.verified is False
    assert result.verify_error.startswith("unable to get local issuer certificate"), result


def test_name_the_certificate_lacks_fails_verification(known_server, rsa_chain, workdir):
    bundle = _bundle(rsa_chain, workdir, "rsa")
    result = tls_probe.handshake(HOST, known_server.port, "elsewhere.test", ca_bundle=bundle)
    assert result.verified is False and "hostname mismatch" in result.verify_error, result


@pytest.mark.parametrize("server_name, chain_name, key_type", [
    ("other.test", "ec", "EC"), ("probe.test", "rsa", "RSA"), (None, "rsa", "RSA"),
])
def test_sni_chooses_the_certificate_apart_from_the_address(
    sni_server, rsa_chain, ec_chain, server_name, chain_name, key_type
):
    chain = {"ec": ec_chain, "rsa": rsa_chain}[chain_name]
    result = tls_probe.handshake(HOST, sni_server.port, server_name)
    assert result.key_type == key_type
    assert result.leaf_fingerprint == certs.public_key_fingerprint(chain.leaf_pem)
    assert result.server_name == server_name
    assert sni_server.server_names[-1] == server_name, "the server saw the SNI sent"


@pytest.mark.parametrize("offer, expected", [
    (["http/1.1"], "http/1.1"), (["http/1.1", "h2"], "h2"), (None, None), (["spdy/3"], None),
])
def test_alpn_reports_the_servers_choice(known_server, offer, expected):
    result = tls_probe.handshake(HOST, known_server.port, alpn=offer)
    assert result.alpn_protocol == expected


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_group_is_the_curve_the_server_was_limited_to(rsa_chain, workdir, version):
    context = server_context(rsa_chain, workdir)
    context.set_ecdh_curve("secp384r1")
    with TlsServer(context) as server:
        result = tls_probe.handshake(HOST, server.port, max_version=version)
    assert (result.protocol, result.group) == (version, "secp384r1")


def _stdlib_ticket_hint(port):
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection((HOST, port), timeout=5) as raw:
        with client.wrap_socket(raw) as tls:
            return tls.session.ticket_lifetime_hint if tls.session.has_ticket else None


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_ticket_lifetime_hint_is_read_and_absent_without_tickets(rsa_chain, workdir, version):
    with TlsServer(server_context(rsa_chain, workdir)) as server:
        with_tickets = tls_probe.handshake(HOST, server.port, max_version=version)
        second_opinion = _stdlib_ticket_hint(server.port)
    assert with_tickets.ticket_lifetime_hint == second_opinion and second_opinion > 0
    context = server_context(rsa_chain, workdir)
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    with TlsServer(context) as server:
        without = tls_probe.handshake(HOST, server.port, max_version=version, ticket_wait=0.1)
    assert without.ticket_lifetime_hint is None


@pytest.mark.parametrize("reason, alert, number, received", [
    ("tlsv1 alert protocol version", "protocol_version", 70, True),
    ("sslv3 alert handshake failure", "handshake_failure", 40, True),
    ("tls alert handshake failure", "handshake_failure", 40, True),
    ("tlsv1 unrecognized name", "unrecognized_name", 112, True),
    ("tlsv13 alert certificate required", "certificate_required", 116, True),
    ("tlsv1 alert unknown ca", "unknown_ca", 48, True),
    ("unsupported protocol", None, None, False),
])
def test_openssl_error_strings_become_alerts(reason, alert, number, received):
    refused = tls_probe._refusal(SSL.Error([("SSL routines", "", reason)]))
    assert (refused.alert, refused.alert_number, refused.received) == (alert, number, received)
    assert refused.reason == reason


def test_closed_port_is_connect_failed_not_a_refusal():
    with socket.create_server((HOST, 0)) as probe_socket:
        port = probe_socket.getsockname()[1]
    with pytest.raises(tls_probe.ConnectFailed) as caught:
        tls_probe.handshake(HOST, port, timeout=1)
    assert not isinstance(caught.value, tls_probe.HandshakeRefused)
    assert f"{HOST}:{port}" in str(caught.value)


def test_server_closing_at_once_is_a_refusal_without_an_alert():
    with socket.create_server((HOST, 0)) as listener:
        def close_first():
            client, _ = listener.accept()
            client.close()
        threading.Thread(target=close_first, daemon=True).start()
        with pytest.raises(tls_probe.HandshakeRefused) as caught:
            tls_probe.handshake(HOST, listener.getsockname()[1], timeout=2)
    assert (caught.value.alert, caught.value.received) == (None, True)


def test_silent_server_times_out():
    with socket.create_server((HOST, 0)) as listener:
        with pytest.raises(tls_probe.HandshakeTimeout):
            tls_probe.handshake(HOST, listener.getsockname()[1], timeout=0.3)


def test_scan_finds_exactly_what_the_server_was_told(known_server):
    scan = tls_probe.scan(HOST, known_server.port, "probe.test")
    assert scan.accepted_protocols == ("TLSv1.1", "TLSv1.2")
    assert scan.refused_protocols == ("TLSv1", "TLSv1.3")
    assert set(scan.protocol("TLSv1.2").accepted_ciphers) == set(KNOWN_CIPHERS)
    assert set(scan.protocol("TLSv1.1").accepted_ciphers) == set(SHA1_CBC)
    assert scan.protocol("TLSv1.2").negotiated_cipher == KNOWN_CIPHERS[0]
    assert scan.protocol("TLSv1.1").negotiated_cipher == SHA1_CBC[0]
    for version in ("TLSv1", "TLSv1.3"):
        refused = scan.protocol(version)
        assert not refused.accepted and refused.accepted_ciphers == ()
        assert "protocol_version" in refused.refusal
    tls12 = scan.protocol("TLSv1.2")
    tried = set(tls12.accepted_ciphers + tls12.refused_ciphers)
    assert tried == set(tls_scan.offerable_ciphers("TLSv1.2")) and len(tried) > 50


def test_compare_names_an_accepted_cipher_the_policy_does_not_allow(rsa_chain, workdir):
    policy = policies.get_policy("ELBSecurityPolicy-FS-1-2-Res-2020-10")
    with policy_server(rsa_chain, workdir, policy, extra=["ECDHE-RSA-AES128-SHA"]) as server:
        difference = tls_probe.compare(tls_probe.scan(HOST, server.port), policy, "RSA")
    assert difference.accepted_not_allowed == (Finding("TLSv1.2", "ECDHE-RSA-AES128-SHA"),)
    assert difference.allowed_but_refused == () and not difference.ok
    assert "accepted but not allowed: TLSv1.2 ECDHE-RSA-AES128-SHA" in difference.describe()


def test_compare_names_an_allowed_cipher_the_server_refuses(rsa_chain, workdir):
    policy = policies.get_policy("ELBSecurityPolicy-FS-1-2-Res-2020-10")
    refused = "ECDHE-RSA-AES256-GCM-SHA384"
    with policy_server(rsa_chain, workdir, policy, without=[refused]) as server:
        difference = tls_probe.compare(tls_probe.scan(HOST, server.port), policy, "RSA")
    assert difference.allowed_but_refused == (Finding("TLSv1.2", refused),)
    assert difference.accepted_not_allowed == () and not difference.ok
    assert f"allowed but refused: TLSv1.2 {refused}" in difference.describe()


def test_compare_names_protocols_in_both_directions(known_server):
    policy = policies.get_policy("ELBSecurityPolicy-TLS13-1-2-Res-2021-06")
    difference = tls_probe.compare(tls_probe.scan(HOST, known_server.port), policy, "RSA")
    assert Finding("TLSv1.1") in difference.accepted_not_allowed
    assert Finding("TLSv1.3") in difference.allowed_but_refused
    # At TLS 1.2 the server's SHA-1 suites are extra and the policy's other GCM suite missing.
    assert Finding("TLSv1.2", "AES256-SHA") in difference.accepted_not_allowed
    assert Finding("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256") in difference.allowed_but_refused
    text = difference.describe()
    assert "TLSv1.1 (protocol) with ECDHE-RSA-AES128-SHA, AES256-SHA" in text, text
    assert "allowed but refused: TLSv1.3 (protocol)" in text, text


def test_scan_and_compare_are_reachable_from_the_probe_module():
    assert tls_probe.scan is tls_scan.scan and tls_probe.compare is tls_scan.compare
    with pytest.raises(AttributeError):
        tls_probe.no_such_name
