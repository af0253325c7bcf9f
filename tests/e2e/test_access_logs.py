"""Access logs: delivered where the attributes say, in the AWS layout, one entry per connection."""

import time
from dataclasses import dataclass

import pytest

from fixtures.e2e import TlsListener
from fixtures.expectations import listener_expectation, name_covered
from fixtures.log_checks import (
    LogMismatch,
    await_entries,
    check_delivery_allowed,
    check_entry,
    check_object_keys,
    describe_log_destination,
    diagnose_missing_entries,
)
from fixtures.log_poller import LogPoller

pytestmark = pytest.mark.e2e

# Locally objects arrive every second and clocks are one; a real NLB batches for 5 minutes
# and its clock may differ from ours by a little.
_POLL_S = {"local": 1.0, "aws": 30.0}
_CLOCK_SLACK_S = {"local": 2.0, "aws": 120.0}


@dataclass(frozen=True)
class Delivery:
    """What the wait for log entries found."""

    poller: LogPoller
    found: list
    missing: list
    listeners: dict


@pytest.fixture(scope="module")
def log_destination(e2e_stack):
    """The access-log attributes of the load balancer (describe_load_balancer_attributes)."""
    destination = describe_log_destination(
        e2e_stack.clients.elbv2, e2e_stack.load_balancer_arn, e2e_stack.account_id,
        e2e_stack.region, e2e_stack.load_balancer_name, e2e_stack.load_balancer_id,
    )
    if e2e_stack.mode == "existing-nlb" and not destination.enabled:
        pytest.skip("access logs are not enabled on this load balancer")
    return destination


@pytest.fixture(scope="module")
def log_poller(e2e_stack, log_destination, e2e_options) -> LogPoller:
    """Reads the objects under PREFIX/AWSLogs/ACCOUNT/elasticloadbalancing/REGION/, and
    saves each to --log-download DIR when given."""
    return LogPoller(e2e_stack.clients.s3, log_destination.bucket, log_destination.prefix,
                     e2e_stack.account_id, e2e_stack.region,
                     download=e2e_options.log_download)


@pytest.fixture(scope="module")
def delivered(traffic, log_poller, tls_listener_ports, tls_request, connection_registry,
              e2e_options, e2e_progress, conformance) -> Delivery:
    """Makes one connection per listener, then waits for the entries of every connection
    the session made: all of them locally, at least one against a real account. What was
    found goes to the conformance report."""
    listeners = {}
    for port in tls_listener_ports:
        expectation = listener_expectation(traffic.clients, traffic.load_balancer_arn, port,
                                           offline=traffic.offline, state=traffic.state)
        listeners[port] = TlsListener(expectation, traffic.address(port), traffic)
        tls_request(listeners[port], "GET", "/access-log", purpose="access-log probe")
    records = connection_registry.records()
    listener_ids = {p: l.expectation.listener_id for p, l in listeners.items()}
    started = time.monotonic()
    found, missing = await_entries(
        log_poller, records, listener_ids,
        require_all=traffic.target == "local", timeout=e2e_options.log_wait,
        interval=_POLL_S[traffic.target], clock_slack=_CLOCK_SLACK_S[traffic.target],
        report=e2e_progress,
    )
    e2e_progress(f"access logs: entries for {len(found)} of {len(records)} connections in "
                 f"{len(log_poller.objects)} object(s) after {time.monotonic() - started:.1f} s")
    conformance.access_logs_matched(found, missing, log_poller, listener_ids,
                                    e2e_options.log_download)
    return Delivery(log_poller, found, missing, listeners)


def test_access_logs_are_enabled_for_the_stacks_bucket_and_prefix(log_destination, e2e_stack):
    wanted = e2e_stack.state.get("access_logs") or {}
    got = (log_destination.enabled, log_destination.bucket, log_destination.prefix)
    expected = (True, wanted.get("bucket"), wanted.get("prefix"))
    assert got == expected, (
        f"expected access logs (enabled, bucket, prefix) {expected} (the stack's state file), "
        f"{log_destination.source} says {got}"
    )


def test_bucket_policy_lets_the_delivery_service_write(log_destination, e2e_stack):
    check_delivery_allowed(e2e_stack.clients.s3, log_destination)


def test_log_objects_follow_the_nlb_key_layout(e2e_stack, log_destination, log_poller, request):
    if e2e_stack.traffic_skip_reason:
        log_poller.poll()
        if not log_poller.objects and not log_poller.problems:
            pytest.skip(f"{e2e_stack.traffic_skip_reason}; listed s3://{log_poller.bucket}/"
                        f"{log_poller.directory}: no objects, as expected without traffic")
    else:
        request.getfixturevalue("delivered")
    if log_poller.problems:
        raise LogMismatch("log objects outside the NLB layout or unreadable:\n  "
                          + "\n  ".join(log_poller.problems))
    if not log_poller.objects:
        raise LogMismatch(
            "expected log objects after the suite's connections, got none: "
            + diagnose_missing_entries(e2e_stack.clients.s3, log_destination, log_poller)
        )
    check_object_keys(log_poller.objects, log_destination)


def test_the_suites_connections_are_logged(delivered, traffic, log_destination):
    diagnosis = ""
    if delivered.missing:
        diagnosis = diagnose_missing_entries(traffic.clients.s3, log_destination,
                                             delivered.poller)
    missing = "\n  ".join(record.describe() for record in delivered.missing)
    if traffic.target == "local":
        assert not delivered.missing, (
            f"expected an access-log entry for each of the "
            f"{len(delivered.found) + len(delivered.missing)} connections the suite made "
            f"(the local data plane logs every one), "
            f"{len(delivered.missing)} have none: {diagnosis}\n  {missing}"
        )
    else:
        assert delivered.found, (
            f"expected at least one of the suite's {len(delivered.missing)} connections in the "
            f"access logs within --log-wait (AWS logs best effort), found none: {diagnosis}"
        )


def _certificate_arns(listener, server_name) -> list[str]:
    expectation = listener.expectation
    named = [c.arn for c in expectation.sni_certificates
             if server_name and any(name_covered(server_name, n) for n in c.names)]
    return named or [expectation.default_certificate.arn]


def test_each_entry_says_what_the_client_saw(delivered, log_destination):
    if not delivered.found:
        pytest.fail("no entry of the suite's connections was found to compare; see "
                    "test_the_suites_connections_are_logged")
    for logged in delivered.found:
        listener = delivered.listeners[logged.record.listener_port]
        check_entry(logged, listener.expectation.listener_id,
                    _certificate_arns(listener, logged.record.server_name), log_destination)
