"""Polling waits with a deadline that report progress at least every 15 seconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "Waits",
    "WaitTimeout",
    "WaitFailed",
    "wait_until",
    "wait_for_load_balancer",
    "wait_for_targets",
    "wait_for_instances",
]

log = logging.getLogger(__name__)


class WaitTimeout(TimeoutError):
    """The awaited state was not reached by the deadline; the message says the last status."""


class WaitFailed(RuntimeError):
    """The awaited resource reached a state it cannot leave (a failed load balancer)."""


@dataclass(frozen=True)
class Waits:
    """Deadlines and poll interval of the build's waits, in seconds.

    Defaults suit a real account: a load balancer is active in 2-5 minutes; targets wait
    3-5 minutes for registration before health checks start. `progress_s` is capped at 15.
    """

    load_balancer_s: float = 900.0
    targets_s: float = 1200.0
    instances_s: float = 600.0
    poll_s: float = 5.0
    progress_s: float = 15.0


def wait_until(
    what: str,
    probe: Callable[[], tuple[bool, str]],
    *,
    deadline_s: float,
    poll_s: float,
    progress_s: float = 15.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Call PROBE until it returns `(True, status)`; return the seconds it took.

    PROBE returns whether the state is reached and a short status for the progress lines.
    A progress line (what, status, elapsed, deadline) is logged on the first unsuccessful poll
    and then at least every `min(progress_s, 15)` seconds. Raises WaitTimeout at the deadline.
    """
    progress_s = min(progress_s, 15.0)
    started = clock()
    last_report = None
    while True:
        done, status = probe()
        elapsed = clock() - started
        if done:
            log.info("%s: done after %.0f s (%s)", what, elapsed, status)
            return elapsed
        if elapsed >= deadline_s:
            raise WaitTimeout(f"{what}: not reached after {elapsed:.0f} s (deadline "
                              f"{deadline_s:.0f} s); last status: {status}")
        if last_report is None or elapsed - last_report >= progress_s:
            log.info("waiting for %s: %s; %.0f s elapsed, deadline %.0f s",
                     what, status, elapsed, deadline_s)
            last_report = elapsed
        # Wake up for the next poll, the next progress line or the deadline, whichever is first.
        next_report = last_report + progress_s - elapsed
        sleep(max(0.0, min(poll_s, next_report, deadline_s - elapsed)))


def wait_for_load_balancer(clients, arn: str, waits: Waits = Waits(), **clock) -> float:
    """Wait until the load balancer ARN is `active`; WaitFailed if it is `failed`."""

    def probe():
        described = clients.elbv2.describe_load_balancers(LoadBalancerArns=[arn])
        state = described["LoadBalancers"][0]["State"]
        if state["Code"] == "failed":
            raise WaitFailed(f"load balancer {arn} failed: {state.get('Reason', 'no reason')}")
        return state["Code"] == "active", f"state {state['Code']}"

    return wait_until(f"load balancer {arn.rsplit('/', 2)[-2]} to be active", probe,
                      deadline_s=waits.load_balancer_s, poll_s=waits.poll_s,
                      progress_s=waits.progress_s, **clock)


def _health_summary(name: str, descriptions: list[dict]) -> tuple[bool, str]:
    states = [d["TargetHealth"]["State"] for d in descriptions]
    healthy = states.count("healthy")
    others = sorted({
        f"{d['TargetHealth']['State']}: {d['TargetHealth'].get('Reason', '-')}"
        for d in descriptions if d["TargetHealth"]["State"] != "healthy"
    })
    status = f"{name} {healthy}/{len(states)} healthy"
    if others:
        status += f" ({'; '.join(others)})"
    return bool(states) and healthy == len(states), status


def wait_for_targets(clients, target_group_arns: Iterable[str], waits: Waits = Waits(),
                     **clock) -> float:
    """Wait until every registered target of every group reports `healthy`.

    Reads describe_target_health each poll, so it waits for whatever health the endpoint
    reports: moto says healthy at once, the local data plane and AWS report measured health.
    """
    arns = list(target_group_arns)

    def probe():
        results = []
        for arn in arns:
            answer = clients.elbv2.describe_target_health(TargetGroupArn=arn)
            results.append(_health_summary(arn.rsplit("/", 2)[-2],
                                           answer["TargetHealthDescriptions"]))
        return all(done for done, _ in results), ", ".join(s for _, s in results)

    return wait_until("targets to be healthy", probe, deadline_s=waits.targets_s,
                      poll_s=waits.poll_s, progress_s=waits.progress_s, **clock)


def wait_for_instances(clients, instance_ids: Iterable[str], waits: Waits = Waits(),
                       **clock) -> float:
    """Wait until every instance is `running` (targets can be registered only then)."""
    ids = list(instance_ids)

    def probe():
        answer = clients.ec2.describe_instances(InstanceIds=ids)
        states = {i["InstanceId"]: i["State"]["Name"]
                  for r in answer["Reservations"] for i in r["Instances"]}
        if any(state in ("terminated", "shutting-down") for state in states.values()):
            raise WaitFailed(f"instances ended before running: {states}")
        running = sum(state == "running" for state in states.values())
        return running == len(ids), f"{running}/{len(ids)} running"

    return wait_until("instances to be running", probe, deadline_s=waits.instances_s,
                      poll_s=waits.poll_s, progress_s=waits.progress_s, **clock)
