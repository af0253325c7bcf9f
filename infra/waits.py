"""Polling waits with a deadline that report progress at least every 15 seconds."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "PROGRESS_EVERY",
    "Waits",
    "WaitTimeout",
    "WaitFailed",
    "check_seconds",
    "wait_until",
    "wait_for_load_balancer",
    "wait_for_targets",
    "wait_for_instances",
]

log = logging.getLogger(__name__)

# The longest stretch a wait may go without a progress line, whatever its poll interval.
PROGRESS_EVERY = 15.0


class WaitTimeout(TimeoutError):
    """The awaited state was not reached by the deadline; the message says the last status."""


class WaitFailed(RuntimeError):
    """The awaited resource reached a state it cannot leave (a failed load balancer)."""


@dataclass(frozen=True)
class Waits:
    """Deadlines and poll interval of the build's waits, in seconds.

    Defaults suit a real account: a load balancer is active in 2-5 minutes; targets wait
    3-5 minutes for registration before health checks start. `progress_s` is capped at
    PROGRESS_EVERY (15).
    """

    load_balancer_s: float = 900.0
    targets_s: float = 1200.0
    instances_s: float = 600.0
    poll_s: float = 5.0
    progress_s: float = 15.0


def check_seconds(name: str, value: float) -> None:
    """Raise ValueError naming NAME unless VALUE is a finite number of seconds >= 0.

    A NaN deadline compares false with everything, so a wait on it would never end; an
    infinite one never ends either. Both are refused rather than waited on.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value!r}: expected a finite number of seconds >= 0")


def wait_until(
    what: str,
    probe: Callable[[], tuple[bool, str]],
    *,
    deadline_s: float,
    poll_s: float,
    progress_s: float = PROGRESS_EVERY,
    report: Callable[[str], None] = log.info,
    report_at_start: bool = True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Call PROBE every `poll_s` seconds until it returns `(True, status)`; return the
    seconds it took.

    PROBE returns whether the state is reached and a short status for the progress lines.
    A progress line (what, last status, elapsed, deadline) goes to `report` on the first
    unsuccessful poll (later with `report_at_start=False`) and then at least every
    `min(progress_s, 15)` seconds, also when `poll_s` is longer: a sleep never outlasts the
    next line. Raises WaitTimeout at the deadline, naming the last status; ValueError when
    `deadline_s` or `poll_s` is not a finite number >= 0 or `progress_s` is not > 0.
    `clock` and `sleep` are there for tests.
    """
    check_seconds("deadline_s", deadline_s)
    check_seconds("poll_s", poll_s)
    if not progress_s > 0:  # also NaN
        raise ValueError(f"progress_s={progress_s!r}: expected a number of seconds > 0")
    progress_s = min(progress_s, PROGRESS_EVERY)
    started = clock()
    next_report = started if report_at_start else started + progress_s
    while True:
        done, status = probe()
        now = clock()
        if done:
            log.info("%s: done after %.0f s%s", what, now - started,
                     f" ({status})" if status else "")
            return now - started
        if now - started >= deadline_s:
            raise WaitTimeout(f"gave up waiting for {what} after {now - started:.0f} s "
                              f"(deadline {deadline_s:.0f} s)"
                              + (f"; last status: {status}" if status else ""))
        # Sleep until the next poll, stopping at each progress line due before it.
        next_poll = min(now + poll_s, started + deadline_s)
        while True:
            if now >= next_report:
                report(f"waiting for {what}: " + (f"{status}; " if status else "")
                       + f"{now - started:.0f} s elapsed, deadline {deadline_s:.0f} s")
                next_report = now + progress_s
            if now >= next_poll:
                break
            sleep(min(next_poll, next_report) - now)
            now = clock()


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
