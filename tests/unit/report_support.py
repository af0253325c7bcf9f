"""A conformance report built from real scans of two local TLS servers, for the report tests.

One server is configured exactly as its policy says; the other differs from its policy in
two known ways (one cipher too many, one missing), so every state of the matrix that
matters shows up from a real scan, not from hand-written cells.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from fixtures.conformance import ConformanceRecorder
from fixtures.expectations import (
    CertificateExpectation,
    ListenerExpectation,
    PolicyExpectation,
    TargetGroupExpectation,
)
from fixtures.report import ConformanceReport
from fixtures.tls_probe import handshake, scan
from infra import certs, policies
from infra.certs import public_key_fingerprint
from tests.unit.tls_server import policy_server

UTC = datetime.timezone.utc
HOST = "127.0.0.1"
SERVER_NAME = "report.test"
MATCHING_PORT, DIFFERING_PORT = 443, 9443
MATCHING_POLICY = "ELBSecurityPolicy-2016-08"
DIFFERING_POLICY = "ELBSecurityPolicy-FS-1-2-Res-2020-10"
EXTRA_CIPHER = "ECDHE-RSA-AES128-SHA"  # accepted by the differing server, not in its policy
MISSING_CIPHER = "ECDHE-RSA-AES256-GCM-SHA384"  # in its policy, refused by the server
# Values a hostile or careless peer controls, which every writer must show as text.
HOSTILE = '<script>alert("x")</script> | `code` **bold**\nsecond line'


@dataclass(frozen=True)
class Scanned:
    """One local server's scan, with the policy it is judged by and a default handshake."""

    port: int
    policy: policies.SecurityPolicy
    scan: object
    handshake: object


def _certificate(chain: certs.CertificateChain) -> CertificateExpectation:
    leaf = chain.leaf_pem
    return CertificateExpectation(
        arn="arn:aws:acm:eu-west-1:123456789012:certificate/report-test",
        domain=SERVER_NAME, names=(SERVER_NAME,), key_type="RSA_2048", key_algorithm="RSA",
        key_bits=2048, leaf_subject=f"CN={SERVER_NAME}", leaf_issuer="CN=intermediate",
        leaf_pem=leaf, leaf_fingerprint=public_key_fingerprint(leaf), chain_subjects=(),
        chain_source="test",
    )


def expectation(port: int, policy: policies.SecurityPolicy,
                certificate: CertificateExpectation) -> ListenerExpectation:
    """A ListenerExpectation as the e2e suite reads one from the API."""
    group = TargetGroupExpectation(f"arn:aws:elasticloadbalancing:eu-west-1:123456789012:"
                                   f"targetgroup/tg{port}/0", "TCP", port, "ip", 10, 5, 2, 2)
    return ListenerExpectation(
        arn=f"arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/net/lb/1/{port}",
        listener_id=f"id{port}", port=port, protocol="TLS",
        policy=PolicyExpectation(policy, f"the policy table for {policy.name}"),
        default_certificate=certificate, sni_certificates=(), target_group=group,
        alpn_policy=None,
    )


def scan_servers(directory: Path) -> tuple[certs.CertificateChain, dict[int, Scanned]]:
    """Start both servers, scan each and make one default handshake with each."""
    chain = certs.generate_chain([SERVER_NAME])
    setups = {
        MATCHING_PORT: (policies.get_policy(MATCHING_POLICY), {}),
        DIFFERING_PORT: (policies.get_policy(DIFFERING_POLICY),
                         {"extra": [EXTRA_CIPHER], "without": [MISSING_CIPHER]}),
    }
    scanned = {}
    for port, (policy, changes) in setups.items():
        with policy_server(chain, directory, policy, **changes) as server:
            scanned[port] = Scanned(port, policy, scan(HOST, server.port, SERVER_NAME),
                                    handshake(HOST, server.port, SERVER_NAME))
    return chain, scanned


def _phase(recorder: ConformanceRecorder, nodeid: str, port, outcome: str, message: str = "",
           when: str = "call") -> None:
    name = nodeid.split("::")[-1].split("[")[0]
    recorder.outcomes.add(nodeid, name, port, "setup", "passed", "", 0.01)
    recorder.outcomes.add(nodeid, name, port, when, outcome, message, 0.02)


def build_report(chain: certs.CertificateChain, scanned: dict[int, Scanned]) -> ConformanceReport:
    """A report as a session would record it: both listeners, checks, timings, log entries.

    The differing listener's policy check fails with a message carrying HOSTILE.
    """
    recorder = ConformanceRecorder()
    recorder.run_facts({"target": "local", "region": "eu-west-1",
                        "ssl_policy": f"{MATCHING_POLICY} {HOSTILE}"})
    certificate = _certificate(chain)
    for port, found in scanned.items():
        recorder.listener_configured(expectation(port, found.policy, certificate))
        recorder.handshake_observed(port, found.handshake)
        recorder.policy_scanned(port, found.scan, found.policy, "RSA")
        _phase(recorder, f"tests/e2e/test_handshake.py::test_chain[tls{port}]", port, "passed")
    _phase(recorder, f"tests/e2e/test_policy.py::test_policy[tls{DIFFERING_PORT}]",
           DIFFERING_PORT, "failed", f"AssertionError: accepted but not allowed {HOSTILE}")
    _phase(recorder, "tests/e2e/test_health.py::test_health[tls443]", MATCHING_PORT,
           "skipped", "needs our backends")
    _phase(recorder, "tests/e2e/test_handshake.py::test_every_listener", None, "passed")
    recorder.timing("stack_build", 3.25, "from start until served")
    recorder.timing("teardown", None, "not measured: --keep-stack leaves the stack up")
    logged = SimpleNamespace(
        key="nlb/AWSLogs/123456789012/elasticloadbalancing/eu-west-1/2026/12/04/object.log.gz",
        record=SimpleNamespace(
            listener_port=MATCHING_PORT, bytes_sent=120, bytes_received=900,
            cipher="ECDHE-RSA-AES128-GCM-SHA256", protocol="TLSv1.2", server_name=HOSTILE,
            purpose="GET /", started=datetime.datetime(2026, 12, 4, 12, 0, 0, 500000, tzinfo=UTC)),
        entry=SimpleNamespace(
            client=SimpleNamespace(ip="127.0.0.1", port=50000), received_bytes=120,
            sent_bytes=901, tls_cipher="ECDHE-RSA-AES128-GCM-SHA256",
            tls_protocol_version="tlsv12", domain_name=HOSTILE, chosen_cert_arn=certificate.arn,
            time=datetime.datetime(2026, 12, 4, 12, 0, 1)),
    )
    poller = SimpleNamespace(objects=[SimpleNamespace(
        key=logged.key, last_modified=datetime.datetime(2026, 12, 4, 12, 0, 4, tzinfo=UTC))])
    missing = [SimpleNamespace(describe=lambda: f"127.0.0.1:50001 to 9443 {HOSTILE}")]
    recorder.access_logs_matched([logged], missing, poller, {MATCHING_PORT: "id443"})
    return recorder.report(1, [MATCHING_PORT, DIFFERING_PORT],
                           now=datetime.datetime(2026, 12, 4, 12, 5, tzinfo=UTC))
