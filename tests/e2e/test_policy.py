"""Each TLS listener accepts exactly its security policy for its certificate's key type."""

import pytest

from fixtures.checks import check_policy_scan
from fixtures.tls_probe import compare, scan

pytestmark = pytest.mark.e2e


def test_listener_accepts_exactly_the_policy_for_its_key_type(tls_listener, traffic,
                                                              conformance):
    # Both ways: nothing the policy forbids is accepted, nothing it allows is refused.
    expectation = tls_listener.expectation
    host, port = tls_listener.address
    result = scan(host, port, tls_listener.server_name)
    key_algorithm = expectation.default_certificate.key_algorithm
    conformance.policy_scanned(tls_listener.port, result, expectation.policy.policy,
                               key_algorithm)
    difference = compare(result, expectation.policy.policy, key_algorithm)
    check_policy_scan(difference, expectation.policy, tls_listener.port)
