"""Find resources of abandoned runs by the project's tag and age, and tear them down."""

from __future__ import annotations

import datetime
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from infra.stack import PROJECT, TAG_CREATED_AT, TAG_KEEP, TAG_PROJECT, TAG_RUN_ID
from infra.reconcile import CREATION_ORDER
from infra.teardown import TeardownReport, TeardownSettings, teardown

__all__ = ["Run", "SweepReport", "find_runs", "run_resources", "sweep", "DEFAULT_AGE_S"]

log = logging.getLogger(__name__)

DEFAULT_AGE_S = 6 * 3600.0

_ACM_KEY_TYPES = ["RSA_1024", "RSA_2048", "RSA_3072", "RSA_4096", "EC_prime256v1",
                  "EC_secp384r1", "EC_secp521r1"]


@dataclass(frozen=True)
class Run:
    """The tagged resources of one run id, in creation order, and the run's age."""

    run_id: str
    created_at: str | None
    age_s: float | None
    resources: tuple[dict, ...] = field(default=())

    def state(self, region: str, endpoint_url: str | None) -> dict:
        """A state-file-like view of the run for teardown."""
        return {"run_id": self.run_id, "region": region, "endpoint_url": endpoint_url,
                "keep_logs": False, "resources": list(self.resources)}


@dataclass(frozen=True)
class SweepReport:
    """Runs old enough to sweep, runs left because they are younger, and teardown results."""

    old: tuple[Run, ...]
    young: tuple[Run, ...]
    teardowns: dict[str, TeardownReport]
    removed: bool

    @property
    def ok(self) -> bool:
        return all(report.ok for report in self.teardowns.values())


def _parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


def _ours(tags: dict) -> bool:
    return tags.get(TAG_PROJECT) == PROJECT and TAG_RUN_ID in tags


def _tag_dict(tags: Iterable[dict]) -> dict:
    return {t["Key"]: t["Value"] for t in tags or ()}


def _elbv2(clients) -> Iterable[tuple[dict, dict]]:
    elbv2 = clients.elbv2
    balancers = [b["LoadBalancerArn"] for page in
                 elbv2.get_paginator("describe_load_balancers").paginate()
                 for b in page["LoadBalancers"]]
    groups = [g["TargetGroupArn"] for page in
              elbv2.get_paginator("describe_target_groups").paginate()
              for g in page["TargetGroups"]]
    tagged = {}
    arns = balancers + groups
    for start in range(0, len(arns), 20):  # DescribeTags takes at most 20 ARNs
        for item in elbv2.describe_tags(ResourceArns=arns[start:start + 20])["TagDescriptions"]:
            tagged[item["ResourceArn"]] = _tag_dict(item["Tags"])
    for arn in groups:
        yield {"type": "elbv2-target-group", "id": arn}, tagged.get(arn, {})
    for arn in balancers:
        tags = tagged.get(arn, {})
        yield {"type": "elbv2-load-balancer", "id": arn}, tags
        if _ours(tags):
            for listener in elbv2.describe_listeners(LoadBalancerArn=arn)["Listeners"]:
                yield {"type": "elbv2-listener", "id": listener["ListenerArn"]}, tags


def _ec2(clients) -> Iterable[tuple[dict, dict]]:
    ec2 = clients.ec2
    ours = [{"Name": f"tag:{TAG_PROJECT}", "Values": [PROJECT]}]
    for vpc in ec2.describe_vpcs(Filters=ours)["Vpcs"]:
        yield {"type": "ec2-vpc", "id": vpc["VpcId"]}, _tag_dict(vpc.get("Tags"))
    for gateway in ec2.describe_internet_gateways(Filters=ours)["InternetGateways"]:
        tags = _tag_dict(gateway.get("Tags"))
        yield {"type": "ec2-internet-gateway", "id": gateway["InternetGatewayId"]}, tags
        for attachment in gateway.get("Attachments", []):
            yield {"type": "ec2-internet-gateway-attachment", "id": gateway["InternetGatewayId"],
                   "vpc_id": attachment["VpcId"]}, tags
    for subnet in ec2.describe_subnets(Filters=ours)["Subnets"]:
        yield {"type": "ec2-subnet", "id": subnet["SubnetId"]}, _tag_dict(subnet.get("Tags"))
    for table in ec2.describe_route_tables(Filters=ours)["RouteTables"]:
        tags = _tag_dict(table.get("Tags"))
        yield {"type": "ec2-route-table", "id": table["RouteTableId"]}, tags
        for association in table.get("Associations", []):
            if not association.get("Main"):
                yield {"type": "ec2-route-table-association",
                       "id": association["RouteTableAssociationId"]}, tags
    yield from _security_groups(ec2, ours)
    running = ours + [{"Name": "instance-state-name",
                       "Values": ["pending", "running", "stopping", "stopped"]}]
    for page in ec2.get_paginator("describe_instances").paginate(Filters=running):
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                yield ({"type": "ec2-instance", "id": instance["InstanceId"]},
                       _tag_dict(instance.get("Tags")))


def _security_groups(ec2, ours) -> Iterable[tuple[dict, dict]]:
    groups = ec2.describe_security_groups(Filters=ours)["SecurityGroups"]
    referenced = {pair["GroupId"] for g in groups for rule in g.get("IpPermissions", [])
                  for pair in rule.get("UserIdGroupPairs", [])}
    # A group referenced by another one was created first and must be deleted last.
    for group in sorted(groups, key=lambda g: g["GroupId"] not in referenced):
        yield {"type": "ec2-security-group", "id": group["GroupId"]}, _tag_dict(group.get("Tags"))


def _acm(clients) -> Iterable[tuple[dict, dict]]:
    acm = clients.acm
    # Without a keyTypes filter ListCertificates shows RSA 1024/2048 certificates only.
    pages = acm.get_paginator("list_certificates").paginate(
        Includes={"keyTypes": _ACM_KEY_TYPES})
    for page in pages:
        for summary in page["CertificateSummaryList"]:
            arn = summary["CertificateArn"]
            tags = acm.list_tags_for_certificate(CertificateArn=arn).get("Tags", [])
            yield {"type": "acm-certificate", "id": arn}, _tag_dict(tags)


def _s3(clients) -> Iterable[tuple[dict, dict]]:
    s3 = clients.s3
    for bucket in s3.list_buckets().get("Buckets", []):
        name = bucket["Name"]
        try:
            tags = _tag_dict(s3.get_bucket_tagging(Bucket=name)["TagSet"])
        except ClientError:
            continue  # untagged (NoSuchTagSet), or not readable: not ours to judge
        if not _ours(tags) or tags.get(TAG_KEEP) == "true":
            continue
        location = s3.get_bucket_location(Bucket=name).get("LocationConstraint") or "us-east-1"
        if location == clients.region:
            yield {"type": "s3-bucket", "id": name}, tags


def find_runs(clients, now: datetime.datetime | None = None) -> list[Run]:
    """Every run with resources carrying the project tag in the clients' region."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    found: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    for source in (_s3, _acm, _ec2, _elbv2):
        for resource, tags in source(clients):
            if _ours(tags):
                found[tags[TAG_RUN_ID]].append((resource, tags))
    runs = []
    for run_id, items in sorted(found.items()):
        times = [t for t in (_parse_time(tags.get(TAG_CREATED_AT)) for _, tags in items) if t]
        created = min(times) if times else None
        ordered = sorted((r for r, _ in items), key=lambda r: CREATION_ORDER.index(r["type"]))
        runs.append(Run(run_id, created.isoformat() if created else None,
                        (now - created).total_seconds() if created else None, tuple(ordered)))
    return runs


def run_resources(clients, run_id: str) -> tuple[dict, ...]:
    """The resources in the clients' region carrying RUN_ID's tag, in creation order (what
    `down` adds to a ledger that missed some)."""
    for run in find_runs(clients):
        if run.run_id == run_id:
            return run.resources
    return ()


def sweep(clients, older_than_s: float = DEFAULT_AGE_S, *, yes: bool = False,
          now: datetime.datetime | None = None,
          settings: TeardownSettings = TeardownSettings()) -> SweepReport:
    """Tear down (with YES; else only list) every run older than OLDER_THAN_S seconds.

    A run without a readable creation time is listed as old: a resource tagged by the project
    but missing its time tag was left by something that went wrong.
    """
    runs = find_runs(clients, now)
    old = tuple(r for r in runs if r.age_s is None or r.age_s >= older_than_s)
    young = tuple(r for r in runs if r not in old)
    teardowns = {}
    for run in old:
        log.info("run %s, created %s: %d resources%s", run.run_id, run.created_at,
                 len(run.resources), "" if yes else " (listing only; pass --yes to remove)")
        if yes:
            state = run.state(clients.region, clients.endpoint_url)
            teardowns[run.run_id] = teardown(state, clients, keep_logs=False, settings=settings)
    return SweepReport(old, young, teardowns, removed=yes)
