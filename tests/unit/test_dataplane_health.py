"""Health checks: the state machine, the checks themselves, and describe_target_health via moto."""

import asyncio
import http.server
import socket
import threading

import boto3
import pytest

from infra.sandbox import moto_patch
from infra.sandbox.config import Target
from infra.sandbox.health import (
    HealthCheckSettings,
    HealthChecker,
    HealthTable,
    HealthTracker,
    TargetHealth,
    matcher_accepts,
    probe,
)

pytestmark = pytest.mark.unit


def _states(tracker: HealthTracker, results) -> list[str]:
    return [tracker.record(passed).state for passed in results]


def test_new_target_is_initial_until_healthy_threshold_passes():
    states = _states(HealthTracker(3, 2), [True, True, True])
    assert states == ["initial", "initial", "healthy"], f"got {states}"


def test_initial_target_failing_unhealthy_threshold_becomes_unhealthy():
    tracker = HealthTracker(3, 2)
    states = _states(tracker, [False, False])
    assert states == ["initial", "unhealthy"], f"got {states}"
    assert tracker.health.reason == "Target.FailedHealthChecks"


def test_healthy_target_needs_consecutive_failures_to_turn_unhealthy():
    tracker = HealthTracker(2, 3)
    _states(tracker, [True, True])
    states = _states(tracker, [False, False, True, False, False, False])
    assert states == ["healthy"] * 5 + ["unhealthy"], f"got {states}"


def test_unhealthy_target_recovers_after_healthy_threshold_passes():
    tracker = HealthTracker(2, 2)
    _states(tracker, [False, False])
    assert _states(tracker, [True, True]) == ["unhealthy", "healthy"]


@pytest.mark.parametrize("matcher, status, expected", [
    ("200-399", 200, True), ("200-399", 399, True), ("200-399", 404, False),
    ("200,202", 202, True), ("200,202", 201, False), ("200", 200, True),
])
def test_matcher_accepts_codes_and_ranges(matcher, status, expected):
    assert matcher_accepts(matcher, status) is expected


class _Answer(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_target():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    server.status = 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_probe_passes_and_fails_as_the_check_says(http_target):
    port = http_target.server_address[1]
    tcp, http = HealthCheckSettings(), HealthCheckSettings(protocol="HTTP", path="/health")
    assert asyncio.run(probe("127.0.0.1", port, tcp, 1.0)) == ""
    assert asyncio.run(probe("127.0.0.1", port, http, 1.0)) == ""
    http_target.status = 503
    failure = asyncio.run(probe("127.0.0.1", port, http, 1.0))
    assert failure == "Health checks failed with these codes: [503]", f"got {failure!r}"
    refused = asyncio.run(probe("127.0.0.1", _closed_port(), tcp, 1.0))
    assert refused.startswith("Health checks failed"), f"got {refused!r}"


class _Group:
    def __init__(self, arn, targets, settings):
        self.arn, self.targets, self.health_check = arn, tuple(targets), settings


def test_checker_measures_drains_and_marks_unused(http_target):
    settings = HealthCheckSettings(interval_seconds=5, healthy_threshold=2, unhealthy_threshold=2)
    up = Target("127.0.0.1", http_target.server_address[1])
    down = Target("127.0.0.1", _closed_port())
    table = HealthTable()

    async def scenario():
        checker = HealthChecker(table, time_scale=0.1, draining_seconds=0.3)
        group = _Group("arn:g", [up, down], settings)
        checker.apply([group], {"arn:g"})
        first = table.get("arn:g", up.id, up.port).state
        await asyncio.sleep(0.8)
        measured = (table.get("arn:g", up.id, up.port).state,
                    table.get("arn:g", down.id, down.port).state)
        checker.apply([_Group("arn:g", [up], settings)], {"arn:g"})
        drained = table.get("arn:g", down.id, down.port).state
        await asyncio.sleep(0.5)
        gone = table.get("arn:g", down.id, down.port)
        checker.apply([group], set())
        unused = table.get("arn:g", up.id, up.port).state
        checker.stop()
        return first, measured, drained, gone, unused

    first, measured, drained, gone, unused = asyncio.run(scenario())
    assert first == "initial"
    assert measured == ("healthy", "unhealthy"), f"got {measured}"
    assert drained == "draining" and gone is None, f"got {drained}, then {gone}"
    assert unused == "unused", f"a group no listener uses: expected unused, got {unused}"


def _described(elbv2, group) -> dict:
    answer = elbv2.describe_target_health(TargetGroupArn=group)["TargetHealthDescriptions"]
    return {d["Target"]["Port"]: (d["TargetHealth"]["State"], d["TargetHealth"].get("Reason"))
            for d in answer}


def _attach(elbv2, ec2, group) -> None:
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"][:2]]
    balancer = elbv2.create_load_balancer(Name="patch-lb", Type="network", Scheme="internal",
                                          Subnets=subnets)["LoadBalancers"][0]
    elbv2.create_listener(LoadBalancerArn=balancer["LoadBalancerArn"], Protocol="TCP", Port=80,
                          DefaultActions=[{"Type": "forward", "TargetGroupArn": group}])


def test_describe_target_health_reports_the_table_per_port(moto_backends):
    elbv2 = boto3.client("elbv2", region_name="eu-west-1")
    ec2 = boto3.client("ec2", region_name="eu-west-1")
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    table = HealthTable()
    uninstall = moto_patch.install(table)
    try:
        group = elbv2.create_target_group(Name="patch", Protocol="TCP", Port=80, VpcId=vpc,
                                          TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
        elbv2.register_targets(TargetGroupArn=group, Targets=[
            {"Id": "127.0.0.1", "Port": 1001}, {"Id": "127.0.0.1", "Port": 1002}])
        unused = _described(elbv2, group)
        assert unused == {1001: ("unused", "Target.NotInUse"),
                          1002: ("unused", "Target.NotInUse")}, f"no load balancer: {unused}"
        _attach(elbv2, ec2, group)
        table.set(group, "127.0.0.1", 1002,
                  TargetHealth("unhealthy", "Target.FailedHealthChecks", "Health checks failed"))
        described = _described(elbv2, group)
        assert described == {1001: ("initial", "Elb.RegistrationInProgress"),
                             1002: ("unhealthy", "Target.FailedHealthChecks")}, described
        elbv2.deregister_targets(TargetGroupArn=group, Targets=[{"Id": "127.0.0.1", "Port": 1002}])
        after = elbv2.describe_target_health(TargetGroupArn=group)["TargetHealthDescriptions"]
        states = {d["Target"]["Port"]: d["TargetHealth"]["State"] for d in after}
        assert states == {1001: "initial", 1002: "draining"}, f"got {states}"
    finally:
        uninstall()
    fresh = elbv2.create_target_group(Name="unpatched", Protocol="TCP", Port=80, VpcId=vpc,
                                      TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
    elbv2.register_targets(TargetGroupArn=fresh, Targets=[{"Id": "127.0.0.1", "Port": 1001}])
    plain = elbv2.describe_target_health(TargetGroupArn=fresh)["TargetHealthDescriptions"]
    assert [d["TargetHealth"]["State"] for d in plain] == ["healthy"], (
        "after uninstall expected moto's own answer (always healthy) back"
    )


def test_checker_cli_and_sandbox_share_one_default_time_scale():
    import argparse

    from infra.sandbox import cli
    from infra.sandbox.health import DEFAULT_TIME_SCALE
    from infra.sandbox.run import SandboxOptions

    commands = argparse.ArgumentParser().add_subparsers()
    cli.register(commands)
    parsed = commands.choices["sandbox"].parse_args(["--state-file", "s.json"])
    defaults = {
        "HealthChecker": HealthChecker(HealthTable()).time_scale,
        "--health-time-scale": parsed.health_time_scale,
        "SandboxOptions": SandboxOptions(state_file="s.json").health_time_scale,
    }
    assert set(defaults.values()) == {DEFAULT_TIME_SCALE}, (
        f"expected every default to be {DEFAULT_TIME_SCALE}, got {defaults}")
