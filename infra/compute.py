"""Where a stack's targets run: the interface the build calls, and what it returns.

`Ec2Compute` (infra.network) makes a VPC and EC2 instances in a real account (moto accepts the
same calls); the local data plane supplies a compute that starts backend processes on loopback.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

__all__ = ["Compute", "Placement"]


@dataclass(frozen=True)
class Placement:
    """What the load balancer and its target groups need from the compute.

    - `vpc_id`: the VPC the target groups are created in;
    - `subnet_ids`: the load balancer's subnets (two availability zones);
    - `security_group_ids`: the load balancer's security groups (may be empty);
    - `target_type`: `instance` or `ip`, as create_target_group takes it;
    - `targets`: target group key (`TargetGroup.key`, e.g. `tcp8080`) to the targets to
      register, each `{"Id": instance id or IP address, "Port": port}`.
    """

    vpc_id: str
    subnet_ids: tuple[str, ...]
    security_group_ids: tuple[str, ...]
    target_type: str
    targets: dict[str, list[dict]] = field(default_factory=dict)

    def state(self) -> dict:
        """The JSON form kept in the state file under `network`."""
        return {
            "vpc_id": self.vpc_id,
            "subnet_ids": list(self.subnet_ids),
            "security_group_ids": list(self.security_group_ids),
            "target_type": self.target_type,
            "targets": {key: list(targets) for key, targets in self.targets.items()},
        }


class Compute(abc.ABC):
    """Makes the targets of a stack. Subclasses set `target_type` and implement two methods.

    The build calls `prepare` before any create call (read-only checks; raise
    StackConfigError for a bad choice), then `create_targets` as step 3. Every resource
    `create_targets` makes must be recorded with `ledger.record(type, id, **details)` the
    moment it exists. Teardown removes the EC2 types itself; a compute that makes other
    kinds of resources removes them in `delete`.
    """

    target_type: str = "instance"

    def prepare(self, stack, clients) -> None:
        """Check what can be checked before anything is created. Default: nothing."""

    @abc.abstractmethod
    def create_targets(self, stack, clients, ledger) -> Placement:
        """Create the network and targets for STACK and return where they are."""

    def delete(self, resource: dict, clients) -> bool:
        """Remove a ledger RESOURCE of a type teardown does not know; True when handled.

        Teardown calls this only for unknown types; NotFound-like outcomes count as removed.
        Default: handles nothing.
        """
        return False
