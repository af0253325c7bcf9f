"""Each TLS listener's handshake: protocol, cipher, chain, verification, key, SNI selection."""

import pytest

from fixtures.checks import (
    check_chain,
    check_key,
    check_listed_certificate,
    check_negotiated,
    check_served_certificate,
    check_verified,
    expected_negotiation,
    trust_anchor,
)
from fixtures.expectations import certificate_expectation, default_client_ciphers
from fixtures.sni import added_sni_certificate
from fixtures.tls_probe import ProbeError, handshake
from fixtures.waiting import WaitTimeout, wait_for
from infra.certs import GENERATED_KEY_TYPES

pytestmark = pytest.mark.e2e

# How long an added certificate may take to be served: the sandbox applies configuration
# changes within 2 s; a real NLB takes up to minutes.
_SNI_APPLY_S = {"local": 10.0, "aws": 300.0}


def _trust(stack) -> str:
    return f"the CA bundle {stack.ca_bundle}" if stack.ca_bundle else "the system trust store"


@pytest.fixture
def default_handshake(tls_listener, traffic, conformance):
    """One handshake by a default client, sending the default certificate's name as SNI;
    recorded for the conformance report."""
    host, port = tls_listener.address
    got = handshake(host, port, tls_listener.server_name, ca_bundle=traffic.ca_bundle)
    conformance.handshake_observed(tls_listener.port, got)
    return got


def test_every_tls_listener_of_the_load_balancer_is_under_test(e2e_stack, tls_listener_ports):
    described = e2e_stack.clients.elbv2.describe_listeners(
        LoadBalancerArn=e2e_stack.load_balancer_arn)["Listeners"]
    tls_ports = sorted(l["Port"] for l in described if l["Protocol"] == "TLS")
    assert tls_ports == sorted(tls_listener_ports), (
        f"expected the tests to cover every TLS listener describe_listeners shows "
        f"({tls_ports}), they are parametrised over {sorted(tls_listener_ports)}"
    )


def test_default_client_gets_highest_protocol_and_first_policy_cipher(
    tls_listener, default_handshake
):
    expectation = tls_listener.expectation
    expected = expected_negotiation(
        expectation.policy.policy,
        expectation.default_certificate.key_algorithm,
        default_client_ciphers(),
    )
    check_negotiated(
        default_handshake.protocol, default_handshake.cipher, expected,
        expectation.policy.source,
    )


def test_chain_sent_is_leaf_then_imported_intermediates(tls_listener, default_handshake):
    check_chain([entry.subject for entry in default_handshake.chain],
                tls_listener.expectation.default_certificate)


def test_chain_verifies_against_the_stacks_trust_anchor(tls_listener, default_handshake, traffic):
    check_verified(
        default_handshake.verified,
        default_handshake.verify_error,
        [entry.subject for entry in default_handshake.chain],
        tls_listener.expectation.default_certificate,
        _trust(traffic),
    )


def test_key_is_the_certificates_key_type_and_size(tls_listener, default_handshake):
    check_key(default_handshake.key_type, default_handshake.key_bits,
              tls_listener.expectation.default_certificate)


def test_without_sni_the_default_certificate_is_served(tls_listener, traffic):
    host, port = tls_listener.address
    got = handshake(host, port, None, ca_bundle=traffic.ca_bundle)
    check_served_certificate(got.leaf_fingerprint, got.chain[0].subject,
                             tls_listener.expectation.default_certificate, None)


def test_each_listed_certificate_is_served_for_its_name_with_a_chain_that_verifies(
    tls_listener, traffic
):
    # The listener's own certificate list (describe_listener_certificates); the suite builds
    # stacks with one SNI certificate beside the default. Each must come with its imported
    # intermediates and verify against its own CA bundle (else the stack's).
    listed = tls_listener.expectation.sni_certificates
    if not listed:
        pytest.skip(f"listener {tls_listener.port} has no certificate besides the default "
                    "(describe_listener_certificates)")
    host, port = tls_listener.address
    for certificate in listed:
        bundle, trust = trust_anchor(certificate, traffic.ca_bundle)
        got = handshake(host, port, certificate.server_name, ca_bundle=bundle)
        check_listed_certificate(got, certificate, trust)


def test_sni_selects_an_added_certificate_and_no_sni_keeps_the_default(
    tls_listener, traffic, tmp_path, e2e_progress
):
    if traffic.mode == "existing-nlb":
        pytest.skip("--existing-nlb is read-only: no certificate is added to its listeners")
    expectation = tls_listener.expectation
    name = f"sni-{tls_listener.port}.{expectation.default_certificate.server_name}"
    host, port = tls_listener.address
    key_type = expectation.default_certificate.key_type
    key_type = key_type if key_type in GENERATED_KEY_TYPES else "RSA_2048"
    with added_sni_certificate(traffic, expectation.arn, name, key_type, tmp_path) as added:
        named = certificate_expectation(traffic.clients.acm, added.arn)

        def served():
            try:
                got = handshake(host, port, name, ca_bundle=added.files.ca_bundle)
            except ProbeError:
                return None
            return got if got.leaf_fingerprint == named.leaf_fingerprint else None

        try:
            got = wait_for(f"listener {tls_listener.port} to serve {added.arn} for {name}",
                           served, timeout=_SNI_APPLY_S[traffic.target], interval=0.5,
                           report=e2e_progress)
        except WaitTimeout:
            got = handshake(host, port, name, ca_bundle=added.files.ca_bundle)
            check_served_certificate(got.leaf_fingerprint, got.chain[0].subject, named, name)
        check_chain([entry.subject for entry in got.chain], named)
        without = handshake(host, port, None, ca_bundle=traffic.ca_bundle)
        check_served_certificate(without.leaf_fingerprint, without.chain[0].subject,
                                 expectation.default_certificate, None)
