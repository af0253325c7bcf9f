"""Health checks: a stopped backend turns unhealthy and gets no traffic, then comes back."""

import pytest

from fixtures.checks import TargetsMismatch, await_target_state

pytestmark = pytest.mark.e2e

_SLACK_S = 5.0
_CONNECTIONS_WHILE_DOWN = 10


def test_stopped_backend_turns_unhealthy_gets_no_traffic_and_returns(
    tls_listener, local_backends, tls_request, e2e_stack, e2e_progress
):
    group = tls_listener.expectation.target_group
    backends = local_backends.of_group(group.arn)
    assert len(backends) >= 2, (
        f"expected at least two backends in target group {group.arn} (the state's ledger), "
        f"so one can stop while another serves; got {[b.target for b in backends]}"
    )
    stopped = backends[0]
    target = (stopped.host, stopped.port)
    elbv2 = e2e_stack.clients.elbv2

    local_backends.stop(stopped)
    try:
        took = await_target_state(elbv2, group, target, "unhealthy", group.unhealthy_threshold,
                                  slack=_SLACK_S, report=e2e_progress)
        e2e_progress(f"{stopped.target} reported unhealthy after {took:.1f} s")
        answered = []
        for number in range(_CONNECTIONS_WHILE_DOWN):
            response = tls_request(tls_listener, "GET", f"/while-down/{number}", json=True)
            answer = response.json()
            answered.append(f"{answer['local_address']}:{answer['local_port']}")
        if stopped.target in answered:
            reached = answered.count(stopped.target)
            raise TargetsMismatch(
                f"listener {tls_listener.port}: expected no connection to reach the unhealthy "
                f"target {stopped.target} (describe_target_health), {reached} of "
                f"{len(answered)} did"
            )
    finally:
        local_backends.start(stopped)
    took = await_target_state(elbv2, group, target, "healthy", group.healthy_threshold,
                              slack=_SLACK_S, report=e2e_progress)
    e2e_progress(f"{stopped.target} reported healthy again after {took:.1f} s")
