"""Tear a stack down from its ledger: reverse order, idempotent steps, a report of what is left."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import ClientError

from infra.aws import Clients, error_code
from infra.reconcile import check_state_account, with_untracked
from infra.stack import TAG_KEEP
from infra.state import StateFileError, read_state, run_directory, write_state

__all__ = [
    "teardown",
    "down",
    "TeardownReport",
    "Leftover",
    "TeardownSettings",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Leftover:
    """A resource teardown could not remove, and why."""

    type: str
    id: str
    reason: str


@dataclass(frozen=True)
class TeardownReport:
    """What teardown removed (or found already gone), kept on request, and could not remove."""

    removed: tuple[dict, ...]
    kept: tuple[dict, ...]
    left: tuple[Leftover, ...]

    @property
    def ok(self) -> bool:
        return not self.left

    def describe(self) -> str:
        lines = [f"removed {len(self.removed)}, kept {len(self.kept)}, left {len(self.left)}"]
        lines += [f"kept {r['type']} {r['id']}" for r in self.kept]
        lines += [f"LEFT {x.type} {x.id}: {x.reason}" for x in self.left]
        return "\n".join(lines)


@dataclass(frozen=True)
class TeardownSettings:
    """Deadlines of the retried steps and of the waits for deletion, in seconds."""

    retry_deadline_s: float = 600.0
    wait_deadline_s: float = 600.0
    poll_s: float = 5.0


class _Transient(Exception):
    """Raised inside a step to ask for another try (a deletion not finished yet)."""


# Errors that clear by themselves, and only on the resource types where they do: throttling
# everywhere; ResourceInUseException on a certificate that ACM still sees attached for a while
# after its listener is gone; DependencyViolation on security groups, subnets and the VPC while
# the network interfaces of a deleted load balancer or terminated instance drain, and on
# detaching the gateway while those interfaces still hold public addresses. The same code on
# any other type means something teardown cannot wait out (a gateway still attached, a group
# in use by something the ledger does not list), so it fails at once and is reported.
_THROTTLING = frozenset({
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "SlowDown",
})
_DRAINING = frozenset({"DependencyViolation"})
_TRANSIENT = {
    "acm-certificate": frozenset({"ResourceInUseException", "ResourceInUse"}),
    "ec2-security-group": _DRAINING,
    "ec2-subnet": _DRAINING,
    "ec2-vpc": _DRAINING,
    "ec2-internet-gateway-attachment": _DRAINING,
}
_NOT_FOUND = {
    "LoadBalancerNotFound", "ListenerNotFound", "TargetGroupNotFound",
    "ResourceNotFoundException", "NoSuchBucket", "InvalidVpcID.NotFound",
    "InvalidSubnetID.NotFound", "InvalidGroup.NotFound", "InvalidInternetGatewayID.NotFound",
    "InvalidRouteTableID.NotFound", "InvalidAssociationID.NotFound",
    "InvalidInstanceID.NotFound", "Gateway.NotAttached",
}


def _transient_codes(resource_type: str) -> frozenset:
    return _THROTTLING | _TRANSIENT.get(resource_type, frozenset())


class _Teardown:
    def __init__(self, clients: Clients, settings: TeardownSettings, keep_logs: bool,
                 compute=None, sleep: Callable[[float], None] = time.sleep,
                 run_id: str | None = None, state_path=None):
        self.clients = clients
        self.settings = settings
        self.keep_logs = keep_logs
        self.compute = compute
        self.sleep = sleep
        self.run_id = run_id
        self.state_path = state_path

    def remove(self, resource: dict) -> str:
        """Remove RESOURCE; returns `removed` or `kept`; raises when it cannot."""
        kind = resource["type"]
        if kind == "s3-bucket" and self.keep_logs:
            self._keep_bucket(resource["id"])
            return "kept"
        handler = _HANDLERS.get(kind)
        if handler is None:
            if self.compute is not None and self.compute.delete(resource, self.clients):
                return "removed"
            raise RuntimeError(f"unknown resource type {kind!r}: remove it by hand")
        self._retrying(f"{kind} {resource['id']}", lambda: handler(self, resource),
                       _transient_codes(kind))
        return "removed"

    def _retrying(self, what: str, action: Callable[[], None], transient: frozenset) -> None:
        """Run ACTION until it succeeds or finds the resource gone; retry the error codes in
        TRANSIENT (and `_Transient`) until the deadline, raise anything else at once."""
        deadline = time.monotonic() + self.settings.retry_deadline_s
        delay, last_report = 1.0, 0.0
        while True:
            try:
                action()
                return
            except ClientError as error:
                if error_code(error) in _NOT_FOUND:
                    return
                if error_code(error) not in transient or time.monotonic() >= deadline:
                    raise
                reason = f"{error_code(error)}: {error.response['Error'].get('Message', '')}"
            except _Transient as pending:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{what}: {pending} after "
                                       f"{self.settings.retry_deadline_s:.0f} s") from None
                reason = str(pending)
            remaining = deadline - time.monotonic()
            if time.monotonic() - last_report >= 15.0:
                log.info("removing %s: %s; retrying, %.0f s left", what, reason, remaining)
                last_report = time.monotonic()
            self.sleep(max(0.0, min(delay, remaining)))
            delay = min(delay * 2, self.settings.poll_s * 3)

    # elbv2
    def listener(self, resource: dict) -> None:
        self.clients.elbv2.delete_listener(ListenerArn=resource["id"])

    def load_balancer(self, resource: dict) -> None:
        elbv2 = self.clients.elbv2
        try:
            elbv2.delete_load_balancer(LoadBalancerArn=resource["id"])
            elbv2.describe_load_balancers(LoadBalancerArns=[resource["id"]])
        except ClientError as error:
            if error_code(error) == "LoadBalancerNotFound":
                return
            raise
        # Deletion is asynchronous on AWS; its network interfaces go only after this.
        raise _Transient("load balancer still exists")

    def target_group(self, resource: dict) -> None:
        self.clients.elbv2.delete_target_group(TargetGroupArn=resource["id"])

    # ec2
    def instance(self, resource: dict) -> None:
        ec2 = self.clients.ec2
        if self._instance_state(resource["id"]) == "terminated":
            return
        ec2.terminate_instances(InstanceIds=[resource["id"]])
        # Wait for `terminated`: until then the instance holds its network interface, and
        # its security group and subnet cannot be deleted.
        state = self._instance_state(resource["id"])
        if state != "terminated":
            raise _Transient(f"instance is {state}")

    def _instance_state(self, instance_id: str) -> str:
        answer = self.clients.ec2.describe_instances(InstanceIds=[instance_id])
        states = [i["State"]["Name"] for r in answer["Reservations"] for i in r["Instances"]]
        return states[0] if states else "terminated"

    def security_group(self, resource: dict) -> None:
        self.clients.ec2.delete_security_group(GroupId=resource["id"])

    def route_table_association(self, resource: dict) -> None:
        self.clients.ec2.disassociate_route_table(AssociationId=resource["id"])

    def route_table(self, resource: dict) -> None:
        self.clients.ec2.delete_route_table(RouteTableId=resource["id"])

    def subnet(self, resource: dict) -> None:
        self.clients.ec2.delete_subnet(SubnetId=resource["id"])

    def gateway_attachment(self, resource: dict) -> None:
        self.clients.ec2.detach_internet_gateway(InternetGatewayId=resource["id"],
                                                 VpcId=resource["vpc_id"])

    def gateway(self, resource: dict) -> None:
        ec2 = self.clients.ec2
        described = ec2.describe_internet_gateways(
            InternetGatewayIds=[resource["id"]])["InternetGateways"]
        # AWS refuses to delete an attached gateway, and a run killed between the attach
        # call and its ledger record leaves an attachment the ledger does not list.
        for attachment in described[0].get("Attachments", []) if described else []:
            if attachment.get("State") == "detached":
                continue
            detach = {"id": resource["id"], "vpc_id": attachment["VpcId"]}
            self._retrying(f"ec2-internet-gateway-attachment {resource['id']} to "
                           f"{attachment['VpcId']}", lambda: self.gateway_attachment(detach),
                           _transient_codes("ec2-internet-gateway-attachment"))
        ec2.delete_internet_gateway(InternetGatewayId=resource["id"])

    def vpc(self, resource: dict) -> None:
        self.clients.ec2.delete_vpc(VpcId=resource["id"])

    # acm, s3, local files
    def certificate(self, resource: dict) -> None:
        self.clients.acm.delete_certificate(CertificateArn=resource["id"])

    def bucket(self, resource: dict) -> None:
        s3 = self.clients.s3
        paginator = s3.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=resource["id"]):
            # Every version and delete marker, or delete_bucket fails with BucketNotEmpty.
            objects = [{"Key": o["Key"], "VersionId": o["VersionId"]}
                       for o in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            for start in range(0, len(objects), 1000):
                s3.delete_objects(Bucket=resource["id"],
                                  Delete={"Objects": objects[start:start + 1000],
                                          "Quiet": True})
        s3.delete_bucket(Bucket=resource["id"])

    def _keep_bucket(self, bucket: str) -> None:
        s3 = self.clients.s3
        try:
            tags = s3.get_bucket_tagging(Bucket=bucket)["TagSet"]
        except ClientError as error:
            if error_code(error) == "NoSuchBucket":
                return
            tags = []
        tags = [t for t in tags if t["Key"] != TAG_KEEP] + [{"Key": TAG_KEEP, "Value": "true"}]
        s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tags})
        log.info("kept log bucket %s (tagged %s=true, so the sweeper leaves it)", bucket,
                 TAG_KEEP)

    def directory(self, resource: dict) -> None:
        # The run's generated certificates and private keys. A state file is plain JSON that
        # anyone may edit, so its entry only says which run directory to remove; what is
        # removed is the directory derived from the state file, never an arbitrary path.
        directory = _own_run_directory(resource["id"], self.run_id, self.state_path)
        if directory.is_dir():
            shutil.rmtree(directory)


def _own_run_directory(recorded: str, run_id: str | None, state_path) -> Path:
    """The run directory a `local-directory` entry RECORDED may stand for: the state file's
    own `STATE.d`. Without STATE_PATH (a caller holding the state in memory), RECORDED must
    be `FILE.d` next to a state file FILE of the same run, or be gone already. Raises
    RuntimeError otherwise."""
    given = Path(os.path.normpath(os.path.abspath(recorded)))
    if state_path is not None:
        own = Path(os.path.normpath(run_directory(state_path)))
        if given != own:
            raise RuntimeError(
                f"{recorded} is not this run's directory {own} (the state file's name plus "
                "'.d'); left alone, remove it by hand if it should go")
        return own
    if not os.path.lexists(given):
        return given  # already gone (a second teardown of the same state): nothing to check
    if not given.name.endswith(".d") or len(given.name) <= 2:
        raise RuntimeError(f"{recorded} is not a run directory (STATE_FILE.d); left alone")
    state_file = given.with_name(given.name[:-2])
    try:
        owner = read_state(state_file)
    except StateFileError as error:
        raise RuntimeError(f"{recorded} is not next to a state file of run {run_id} "
                           f"({error}); left alone") from None
    if owner["run_id"] != run_id:
        raise RuntimeError(f"{recorded} belongs to run {owner['run_id']}, not {run_id}; "
                           "left alone")
    return given


_HANDLERS = {
    "elbv2-listener": _Teardown.listener,
    "elbv2-load-balancer": _Teardown.load_balancer,
    "elbv2-target-group": _Teardown.target_group,
    "ec2-instance": _Teardown.instance,
    "ec2-security-group": _Teardown.security_group,
    "ec2-route-table-association": _Teardown.route_table_association,
    "ec2-route-table": _Teardown.route_table,
    "ec2-subnet": _Teardown.subnet,
    "ec2-internet-gateway-attachment": _Teardown.gateway_attachment,
    "ec2-internet-gateway": _Teardown.gateway,
    "ec2-vpc": _Teardown.vpc,
    "acm-certificate": _Teardown.certificate,
    "s3-bucket": _Teardown.bucket,
    "local-directory": _Teardown.directory,
}


def teardown(
    state: dict,
    clients: Clients | None = None,
    *,
    keep_logs: bool | None = None,
    settings: TeardownSettings = TeardownSettings(),
    compute=None,
    state_path=None,
    sleep: Callable[[float], None] = time.sleep,
) -> TeardownReport:
    """Remove every resource in STATE's ledger, newest first; never raises for one resource.

    A resource already gone counts as removed. Errors transient for the resource's type
    (throttling on any; ResourceInUseException on a certificate; DependencyViolation on a
    security group, subnet, VPC or gateway attachment) are retried until
    `settings.retry_deadline_s`; any other error leaves that resource in the report at once
    and teardown moves on. `keep_logs`
    (default: the state's choice) keeps a created log bucket and its objects. `compute`
    removes resource types of its own (see Compute.delete). With `state_path`, the state file
    is rewritten after each step to list only what still exists, and removed when nothing is
    left, so an interrupted teardown can simply be run again. A `local-directory` entry
    removes only the run's own directory: `STATE_PATH.d`, or without `state_path` a `FILE.d`
    next to a state file FILE of the same run; any other path is left and reported.
    """
    clients = clients or Clients.for_state(state)
    keep = state.get("keep_logs", False) if keep_logs is None else keep_logs
    worker = _Teardown(clients, settings, keep, compute, sleep, state.get("run_id"),
                       state_path)
    remaining = list(state.get("resources", []))
    removed, kept, left = [], [], []
    for resource in reversed(state.get("resources", [])):
        try:
            outcome = worker.remove(resource)
        except Exception as error:  # one failed step must not stop the others
            log.warning("could not remove %s %s: %s", resource["type"], resource["id"], error)
            left.append(Leftover(resource["type"], resource["id"], str(error)))
            continue
        (kept if outcome == "kept" else removed).append(resource)
        log.info("%s %s %s", outcome, resource["type"], resource["id"])
        remaining.remove(resource)
        if state_path is not None:
            write_state(state_path, {**state, "resources": remaining,
                                     "status": "tearing-down"})
    report = TeardownReport(tuple(removed), tuple(kept), tuple(left))
    if state_path is not None:
        _finish_state_file(Path(state_path), state, remaining, report)
    return report


def _finish_state_file(path: Path, state: dict, remaining: list, report) -> None:
    if report.ok:
        path.unlink(missing_ok=True)
        log.info("teardown complete; removed state file %s", path)
    else:
        write_state(path, {**state, "resources": remaining, "status": "teardown-incomplete"})
        log.warning("teardown left %d resources; state file %s lists them", len(remaining), path)


def down(state_path, clients: Clients | None = None, *, keep_logs: bool | None = None,
         settings: TeardownSettings = TeardownSettings(),
         discover: Callable[[Clients, str], Iterable[dict]] | None = None) -> TeardownReport:
    """Tear down the stack of STATE_PATH; remove the file when nothing is left, else rewrite
    it listing only what is left (so `down` can simply be run again).

    Raises infra.reconcile.AccountMismatchError, before any delete call, when the clients'
    account is not the state's `account_id`. `discover(clients, run_id)` (e.g.
    `infra.sweep.run_resources`) finds resources carrying the run's tag; those the ledger
    misses (a run killed between a create call and its record) are added to it and removed
    too.
    """
    state = read_state(state_path)
    clients = clients or Clients.for_state(state)
    check_state_account(state, clients)
    if discover is not None:
        resources, added = with_untracked(state["resources"], discover(clients, state["run_id"]))
        if added:
            log.warning("the ledger misses %d resources tagged with run %s; removing them too: "
                        "%s", len(added), state["run_id"],
                        ", ".join(f"{r['type']} {r['id']}" for r in added))
            state = {**state, "resources": resources}
            write_state(state_path, state)
    return teardown(state, clients, keep_logs=keep_logs, settings=settings,
                    state_path=state_path)
