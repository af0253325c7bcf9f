"""The sweeper: abandoned runs found by tag and age, grouped by run id, torn down on --yes."""

import datetime
import os

import pytest

from fixtures.moto import inventory, tagged_resources
from infra.aws import Clients
from infra.network import Ec2Compute
from infra.provision import build
from infra.stack import TAG_CREATED_AT, Certificate, Network, Stack
from infra.sweep import find_runs, sweep
from infra.teardown import TeardownSettings
from infra.state import read_state
from infra.waits import Waits

pytestmark = pytest.mark.unit

FAST = Waits(poll_s=0.01)
QUICK = TeardownSettings(retry_deadline_s=5.0, poll_s=0.01)


def _iso(moment: datetime.datetime) -> str:
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _abandoned(clients, tmp_path, test_chain_files, created_at: str, name: str) -> Stack:
    """Build a stack and lose its state file, as a killed CI job would."""
    files = test_chain_files
    stack = Stack(created_at=created_at, network=Network(ami_id="ami-0123456789abcdef0"),
                  certificate=Certificate.from_files(files.cert_file, files.key_file,
                                                     files.chain_file, files.ca_bundle))
    state_path = tmp_path / f"{name}.json"
    build(stack, clients, Ec2Compute(FAST), state_path, waits=FAST)
    state = read_state(state_path)
    state_path.unlink()  # the run directory with its keys stays: only the tags are left to go by
    return stack, state


def _young_run(clients) -> tuple[Stack, str]:
    """A run started just now: one tagged security group (a build in progress elsewhere)."""
    stack = Stack()
    vpc = clients.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])
    group = clients.ec2.create_security_group(
        GroupName=f"young-{stack.run_id}", Description="young run",
        VpcId=vpc["Vpcs"][0]["VpcId"],
        TagSpecifications=[{"ResourceType": "security-group", "Tags": stack.tag_list()}])
    return stack, group["GroupId"]


def test_sweeper_removes_an_abandoned_run_and_leaves_a_younger_one(clients, tmp_path,
                                                                 test_chain_files):
    now = datetime.datetime.now(datetime.timezone.utc)
    before = inventory(clients)
    old, old_state = _abandoned(clients, tmp_path, test_chain_files,
                                _iso(now - datetime.timedelta(hours=7)), "old")
    young, young_group = _young_run(clients)
    made = inventory(clients)

    listing = sweep(clients, 6 * 3600, yes=False)

    assert old.run_id in [r.run_id for r in listing.old]
    assert young.run_id in [r.run_id for r in listing.young]
    assert inventory(clients) == made, "without --yes the sweeper must remove nothing"
    found = next(r for r in listing.old if r.run_id == old.run_id)
    ledger = sorted(f"{r['type']} {r['id']}" for r in old_state["resources"]
                    if r["type"] != "local-directory")
    assert sorted(f"{r['type']} {r['id']}" for r in found.resources) == ledger
    assert 7 * 3600 - 60 < found.age_s < 7 * 3600 + 600

    removed = sweep(clients, 6 * 3600, yes=True, settings=QUICK)

    assert removed.teardowns[old.run_id].ok, removed.teardowns[old.run_id].describe()
    assert young.run_id not in removed.teardowns
    assert tagged_resources(clients, old.run_id) == []
    assert tagged_resources(clients, young.run_id) == [f"ec2-security-group {young_group}"]
    clients.ec2.delete_security_group(GroupId=young_group)
    assert inventory(clients) == before


def test_resources_are_ordered_so_dependents_go_first(clients):
    """Security groups referenced by others come earlier in creation order (deleted later),
    and a resource without a creation time makes its run count as old."""
    stack = Stack(created_at="not a time")
    vpc = clients.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])
    vpc_id = vpc["Vpcs"][0]["VpcId"]
    spec = [{"ResourceType": "security-group", "Tags": stack.tag_list()}]
    made = [clients.ec2.create_security_group(
        GroupName=f"sweep-{i}-{os.urandom(3).hex()}", Description="t", VpcId=vpc_id,
        TagSpecifications=spec)["GroupId"] for i in range(2)]
    referencing, referenced = made
    clients.ec2.authorize_security_group_ingress(GroupId=referencing, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80,
         "UserIdGroupPairs": [{"GroupId": referenced}]}])

    run = next(r for r in find_runs(clients) if r.run_id == stack.run_id)

    assert [r["id"] for r in run.resources] == [referenced, referencing]
    assert run.age_s is None
    report = sweep(clients, 6 * 3600, yes=True, settings=QUICK)
    assert report.teardowns[stack.run_id].ok
    assert tagged_resources(clients, stack.run_id) == []


def test_sweeper_looks_in_its_own_region_only(clients):
    stack = Stack(created_at="2000-01-01T00:00:00Z")
    bucket = f"elsewhere-{os.urandom(4).hex()}"
    other = Clients("us-west-2")
    other.s3.create_bucket(Bucket=bucket,
                           CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    other.s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": stack.tag_list()})

    assert stack.run_id not in [r.run_id for r in find_runs(clients)]
    found = next(r for r in find_runs(other) if r.run_id == stack.run_id)
    assert [r["id"] for r in found.resources] == [bucket]
    assert found.created_at.startswith("2000-01-01")
    assert TAG_CREATED_AT in stack.tags()
    other.s3.delete_bucket(Bucket=bucket)
