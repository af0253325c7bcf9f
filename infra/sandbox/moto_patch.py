"""Make the in-process moto server's describe_target_health report the sandbox's health checks.

moto says every registered target is `healthy` and keys a target group's targets by Id
alone, so two IP targets on one address with different ports collapse into one. The
sandbox registers `127.0.0.1` on several ports, as an NLB allows, and needs the states its
own checks measured, so it replaces four methods of moto's ELBv2 model while it runs. Only
the sandbox process installs this; `install` returns the function that undoes it.
"""

import logging
from typing import Callable

from moto.elbv2 import models as elbv2_models
from moto.elbv2.exceptions import InvalidTargetError, TargetGroupNotFoundError

from .health import DEREGISTERING, DRAINING, NOT_IN_USE, REGISTERING, HealthTable

__all__ = ["install"]

logger = logging.getLogger(__name__)

_NOT_REGISTERED = (
    "unused", "Target.NotRegistered", "Target is not registered to the target group"
)


def _key(group, target: dict) -> tuple[str, int]:
    return target["Id"], int(target.get("Port") or group.port)


def _register(table: HealthTable):
    def register(self, targets: list) -> None:
        for target in targets:
            target_id, port = _key(self, target)
            if (target_id, port) in self.targets:
                continue  # registering a registered target changes nothing, as on AWS
            self.targets[(target_id, port)] = {"Id": target_id, "Port": port}
            self.deregistered_targets.pop((target_id, port), None)
            # Whatever was measured before (a drain) no longer holds; until the checks run
            # the target is `initial`, or `unused` in a group no load balancer uses.
            table.remove(self.arn, target_id, port)
    return register


def _deregister(table: HealthTable):
    def deregister(self, targets: list) -> None:
        for target in targets:
            key = _key(self, target)
            registered = self.targets.pop(key, None)
            if registered is None:
                raise InvalidTargetError()
            self.deregistered_targets[key] = registered
            table.set(self.arn, key[0], key[1], DEREGISTERING)
    return deregister


def _health_for(table: HealthTable):
    def health_for(self, target: dict, ec2_backend) -> "elbv2_models.FakeHealthStatus":
        target_id, port = _key(self, target)
        measured = table.get(self.arn, target_id, port)
        if (target_id, port) in self.targets:
            # A group no load balancer uses is not checked at all: `unused`, as on AWS.
            health = measured or (REGISTERING if self.load_balancer_arns else NOT_IN_USE)
            state, reason, description = health.state, health.reason, health.description
        elif measured is not None and measured.state == DRAINING:
            state, reason, description = DRAINING, measured.reason, measured.description
        else:
            state, reason, description = _NOT_REGISTERED
        return elbv2_models.FakeHealthStatus(
            target_id, port, self.health_check_port, state, reason, description
        )
    return health_for


def _describe_target_health(table: HealthTable):
    def describe_target_health(self, target_group_arn: str, targets: list) -> list:
        group = self.target_groups.get(target_group_arn)
        if group is None:
            raise TargetGroupNotFoundError()
        if not targets:
            # Without a target list AWS reports the registered targets and those draining.
            targets = list(group.targets.values()) + [
                {"Id": target_id, "Port": port}
                for target_id, port in table.in_state(target_group_arn, DRAINING)
                if (target_id, port) not in group.targets
            ]
        return [group.health_for(target, self.ec2_backend) for target in targets]
    return describe_target_health


def install(table: HealthTable) -> Callable[[], None]:
    """Patch moto's ELBv2 model to use `table`; returns the function restoring moto's own."""
    group_class = elbv2_models.FakeTargetGroup
    backend_class = elbv2_models.ELBv2Backend
    originals = [
        (group_class, "register", group_class.register),
        (group_class, "deregister", group_class.deregister),
        (group_class, "health_for", group_class.health_for),
        (backend_class, "describe_target_health", backend_class.describe_target_health),
    ]
    group_class.register = _register(table)
    group_class.deregister = _deregister(table)
    group_class.health_for = _health_for(table)
    backend_class.describe_target_health = _describe_target_health(table)
    logger.debug("moto's describe_target_health now reports the sandbox's health checks")

    def uninstall() -> None:
        for owner, name, original in originals:
            setattr(owner, name, original)

    return uninstall
