"""Teardown from the ledger: reverse order, idempotent, retries only what is transient, and
leaves nothing after a build that failed at any point."""

import json
import os

import pytest
from botocore.exceptions import ClientError

from fixtures.moto import (
    REGION, FailCalls, fail_nth_mutating_call, inventory, is_mutating, tagged_resources,
)
from infra.compute import Compute
from infra.network import Ec2Compute
from infra.provision import BUILD_STEPS, build
from infra.reconcile import with_untracked
from infra.stack import TAG_KEEP, Certificate, Network, Stack
from infra.state import read_state, run_directory, write_state
from infra.sweep import find_runs, run_resources
from infra.teardown import TeardownSettings, down, teardown
from infra.waits import Waits

pytestmark = pytest.mark.unit

FAST = Waits(poll_s=0.01)
QUICK = TeardownSettings(retry_deadline_s=5.0, poll_s=0.01)


def _stack(test_chain_files) -> Stack:
    """The default stack, importing the session's chain and with the AMI given: generating a
    chain and reading moto's public SSM parameters cost more than the rest of a build."""
    files = test_chain_files
    return Stack(certificate=Certificate.from_files(files.cert_file, files.key_file,
                                                    files.chain_file, files.ca_bundle),
                 network=Network(ami_id="ami-0123456789abcdef0"))


def _build(tmp_path, test_chain_files, clients, on_step=None):
    stack = _stack(test_chain_files)
    state_path = tmp_path / "stack.json"
    build(stack, clients, Ec2Compute(FAST), state_path, waits=FAST, on_step=on_step)
    return stack, state_path


def _state(resources, **fields):
    return {"run_id": "test", "region": REGION, "endpoint_url": None, "resources": resources,
            **fields}


@pytest.fixture(scope="module")
def recorded(module_clients, test_chain_files, tmp_path_factory):
    """A built stack, the inventory from before it, and the create and change calls its
    build made, in order, as (build step, operation name). Torn down by the test that uses
    it (or at the end)."""
    clients, operations, step = module_clients, [], {"name": None}
    before = inventory(clients)
    record = lambda model, **_: operations.append((step["name"], model.name))  # noqa: E731
    clients.register("before-call", record)
    stack, state_path = _build(tmp_path_factory.mktemp("recorded"), test_chain_files, clients,
                               on_step=lambda name: step.update(name=name))
    clients.unregister("before-call", record)
    yield stack, state_path, [(s, name) for s, name in operations if is_mutating(name)], before
    if state_path.exists():
        down(state_path, clients, settings=QUICK)


def test_teardown_removes_everything_and_a_second_run_finds_it_all_gone(recorded, clients):
    stack, state_path, _, before = recorded
    state = read_state(state_path)
    assert tagged_resources(clients, stack.run_id), "the build should have tagged resources"

    report = down(state_path, clients, settings=QUICK)

    assert report.ok, report.describe()
    assert len(report.removed) == len(state["resources"])
    assert [r["id"] for r in report.removed] == [r["id"] for r in reversed(state["resources"])]
    assert tagged_resources(clients, stack.run_id) == []
    assert inventory(clients) == before, f"untagged leftovers: {inventory(clients) - before}"
    assert not state_path.exists() and not run_directory(state_path).exists()
    # The keystore copy of the key went with the run directory; the user's own file stays.
    assert not os.path.exists(state["keystore"])
    assert os.path.exists(state["certificate"]["key_file"])

    again = teardown(state, clients, settings=QUICK)
    assert again.ok, f"a second teardown must find everything gone: {again.describe()}"
    assert len(again.removed) == len(state["resources"])


def test_a_failed_step_does_not_stop_the_others(clients, tmp_path, test_chain_files):
    before = inventory(clients)
    stack, state_path = _build(tmp_path, test_chain_files, clients)
    fault = FailCalls("DeleteTargetGroup", "AccessDenied")
    clients.register("before-call", fault)

    report = down(state_path, clients, settings=QUICK)

    left = sorted((x.type, "AccessDenied" in x.reason) for x in report.left)
    assert left == [("elbv2-target-group", True)] * 2, report.describe()
    remaining = read_state(state_path)
    assert [r["type"] for r in remaining["resources"]] == ["elbv2-target-group"] * 2
    assert remaining["status"] == "teardown-incomplete"
    kinds = {r["type"] for r in report.removed}
    assert {"ec2-vpc", "elbv2-load-balancer", "acm-certificate", "s3-bucket"} <= kinds

    clients.unregister("before-call", fault)
    retried = down(state_path, clients, settings=QUICK)
    assert retried.ok, retried.describe()
    assert inventory(clients) == before and not state_path.exists()


def test_bucket_with_versions_and_delete_markers_is_emptied_and_removed(clients):
    bucket = f"versions-{os.urandom(4).hex()}"
    s3 = clients.s3
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for body in (b"one", b"two"):
        s3.put_object(Bucket=bucket, Key="AWSLogs/a.log.gz", Body=body)
    s3.put_object(Bucket=bucket, Key="AWSLogs/b.log.gz", Body=b"three")
    s3.delete_object(Bucket=bucket, Key="AWSLogs/b.log.gz")  # leaves a delete marker
    listed = s3.list_object_versions(Bucket=bucket)
    assert len(listed["Versions"]) == 3 and len(listed["DeleteMarkers"]) == 1

    report = teardown(_state([{"type": "s3-bucket", "id": bucket}]), clients, settings=QUICK)

    assert report.ok, report.describe()
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert bucket not in names


def test_keep_logs_keeps_the_bucket_tagged_so_the_sweeper_leaves_it(clients):
    bucket = f"kept-{os.urandom(4).hex()}"
    stack = Stack()
    clients.s3.create_bucket(Bucket=bucket,
                             CreateBucketConfiguration={"LocationConstraint": REGION})
    clients.s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": stack.tag_list()})
    clients.s3.put_object(Bucket=bucket, Key="nlb-tls/AWSLogs/x.log.gz", Body=b"log")

    report = teardown(_state([{"type": "s3-bucket", "id": bucket}], keep_logs=True), clients,
                      settings=QUICK)

    assert report.ok and [r["id"] for r in report.kept] == [bucket], report.describe()
    tags = {t["Key"]: t["Value"] for t in clients.s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}
    assert tags[TAG_KEEP] == "true"
    assert clients.s3.get_object(Bucket=bucket, Key="nlb-tls/AWSLogs/x.log.gz")["Body"].read() \
        == b"log"
    assert not [r for r in find_runs(clients) if r.run_id == stack.run_id], \
        "the sweeper must not list a bucket kept on purpose"
    teardown(_state([{"type": "s3-bucket", "id": bucket}]), clients, settings=QUICK)


def _certificate(clients, test_chain_files) -> str:
    return clients.acm.import_certificate(
        Certificate=test_chain_files.cert_file.read_bytes(),
        PrivateKey=test_chain_files.key_file.read_bytes())["CertificateArn"]


def _default_vpc(clients) -> str:
    vpc = clients.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])
    return vpc["Vpcs"][0]["VpcId"]


def _security_group(clients, _files=None) -> str:
    return clients.ec2.create_security_group(
        GroupName=f"sg-{os.urandom(4).hex()}", Description="test",
        VpcId=_default_vpc(clients))["GroupId"]


def _subnet(clients, _files=None) -> str:
    """A subnet of the default VPC (172.31.0.0/16; its default subnets sit low in it)."""
    for _ in range(20):
        cidr = f"172.31.{128 + int.from_bytes(os.urandom(1), 'big') % 128}.0/24"
        try:
            return clients.ec2.create_subnet(VpcId=_default_vpc(clients),
                                             CidrBlock=cidr)["Subnet"]["SubnetId"]
        except ClientError as error:  # that /24 is taken by another test's subnet
            if error.response["Error"]["Code"] != "InvalidSubnet.Conflict":
                raise
    raise AssertionError("no free /24 in the default VPC")


def _gateway(clients, _files=None) -> str:
    return clients.ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]


@pytest.mark.parametrize("operation, code, make, kind", [
    ("DeleteCertificate", "ResourceInUseException", _certificate, "acm-certificate"),
    ("DeleteCertificate", "ThrottlingException", _certificate, "acm-certificate"),
    ("DeleteSecurityGroup", "DependencyViolation", _security_group, "ec2-security-group"),
    ("DeleteSecurityGroup", "RequestLimitExceeded", _security_group, "ec2-security-group"),
    ("DeleteSubnet", "DependencyViolation", _subnet, "ec2-subnet"),
    ("DeleteInternetGateway", "Throttling", _gateway, "ec2-internet-gateway"),
])
def test_transient_errors_are_retried_until_they_clear(operation, code, make, kind, clients,
                                                       test_chain_files):
    resource = make(clients, test_chain_files)
    fault = FailCalls(operation, code, times=2)
    clients.register("before-call", fault)
    slept = []

    report = teardown(_state([{"type": kind, "id": resource}]), clients, settings=QUICK,
                      sleep=slept.append)

    assert report.ok, report.describe()
    assert fault.seen == 3, f"expected two failed tries and a third that worked; {fault.seen}"
    assert len(slept) == 2


def test_an_error_that_is_not_transient_is_not_retried(clients):
    group = _security_group(clients)
    fault = FailCalls("DeleteSecurityGroup", "UnauthorizedOperation")
    clients.register("before-call", fault)

    report = teardown(_state([{"type": "ec2-security-group", "id": group}]), clients,
                      settings=QUICK, sleep=lambda s: pytest.fail("must not retry"))

    assert [(x.type, x.id) for x in report.left] == [("ec2-security-group", group)]
    assert "UnauthorizedOperation" in report.left[0].reason and fault.seen == 1
    clients.unregister("before-call", fault)
    clients.ec2.delete_security_group(GroupId=group)


@pytest.mark.parametrize("operation, code, make, kind", [
    ("DeleteInternetGateway", "DependencyViolation", _gateway, "ec2-internet-gateway"),
    ("DeleteSecurityGroup", "ResourceInUseException", _security_group, "ec2-security-group"),
    ("DeleteCertificate", "DependencyViolation", _certificate, "acm-certificate"),
])
def test_an_error_transient_on_another_type_fails_at_once(operation, code, make, kind,
                                                          clients, test_chain_files):
    """DependencyViolation clears by itself on groups, subnets and the VPC only, and
    ResourceInUseException on a certificate only; elsewhere it is reported, not waited out."""
    resource = make(clients, test_chain_files)
    fault = FailCalls(operation, code)
    clients.register("before-call", fault)

    report = teardown(_state([{"type": kind, "id": resource}]), clients, settings=QUICK,
                      sleep=lambda s: pytest.fail(f"{code} on {kind} must not be retried"))

    assert [(x.type, x.id) for x in report.left] == [(kind, resource)], report.describe()
    assert code in report.left[0].reason, f"expected {code} in {report.left[0].reason!r}"
    assert fault.seen == 1, f"expected one try, got {fault.seen}"
    clients.unregister("before-call", fault)
    assert teardown(_state([{"type": kind, "id": resource}]), clients, settings=QUICK).ok


def _vpc_with_gateway(clients, stack: Stack) -> tuple[str, str]:
    tags = lambda kind: [{"ResourceType": kind, "Tags": stack.tag_list()}]  # noqa: E731
    vpc = clients.ec2.create_vpc(CidrBlock="10.81.0.0/16",
                                 TagSpecifications=tags("vpc"))["Vpc"]["VpcId"]
    gateway = clients.ec2.create_internet_gateway(
        TagSpecifications=tags("internet-gateway"))["InternetGateway"]["InternetGatewayId"]
    return vpc, gateway


def _exists(describe, **arguments) -> bool:
    try:
        describe(**arguments)
    except ClientError as error:
        if error.response["Error"]["Code"].endswith(".NotFound"):
            return False
        raise
    return True


def test_a_gateway_attached_outside_the_ledger_is_detached_and_removed(clients):
    """A run killed between AttachInternetGateway and its ledger record: the gateway step
    detaches what describe_internet_gateways reports, at once, instead of waiting out a
    DependencyViolation and leaving the gateway and the VPC."""
    vpc, gateway = _vpc_with_gateway(clients, Stack())
    clients.ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    ledger = [{"type": "ec2-vpc", "id": vpc}, {"type": "ec2-internet-gateway", "id": gateway}]

    report = teardown(_state(ledger), clients, settings=QUICK,
                      sleep=lambda s: pytest.fail("an attached gateway must not be waited on"))

    assert report.ok, report.describe()
    assert not _exists(clients.ec2.describe_internet_gateways, InternetGatewayIds=[gateway]), \
        f"expected {gateway} gone"
    assert not _exists(clients.ec2.describe_vpcs, VpcIds=[vpc]), f"expected {vpc} gone"


def test_down_also_removes_tagged_resources_the_ledger_misses(clients, tmp_path):
    """A run killed between RunInstances (or AttachInternetGateway) and its ledger record:
    `down` with discovery finds them by the run's tag and removes them before what they
    depend on."""
    stack = Stack()
    vpc, gateway = _vpc_with_gateway(clients, stack)
    clients.ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    subnet = clients.ec2.create_subnet(VpcId=vpc, CidrBlock="10.81.1.0/24", TagSpecifications=[
        {"ResourceType": "subnet", "Tags": stack.tag_list()}])["Subnet"]["SubnetId"]
    instance = clients.ec2.run_instances(
        ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1, SubnetId=subnet,
        TagSpecifications=[{"ResourceType": "instance", "Tags": stack.tag_list()}],
    )["Instances"][0]["InstanceId"]
    state_path = tmp_path / "s.json"
    ledger = [{"type": "ec2-vpc", "id": vpc}, {"type": "ec2-internet-gateway", "id": gateway},
              {"type": "ec2-subnet", "id": subnet}]
    write_state(state_path, _state(ledger, run_id=stack.run_id, account_id="123456789012"))

    report = down(state_path, clients, settings=QUICK, discover=run_resources)

    assert report.ok, report.describe()
    removed = [(r["type"], r["id"]) for r in report.removed]
    assert removed == [("ec2-instance", instance), ("ec2-subnet", subnet),
                       ("ec2-internet-gateway-attachment", gateway),
                       ("ec2-internet-gateway", gateway), ("ec2-vpc", vpc)], removed
    state = clients.ec2.describe_instances(InstanceIds=[instance])
    assert state["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
    assert tagged_resources(clients, stack.run_id) == []
    assert not state_path.exists()


def test_untracked_resources_are_placed_so_dependents_go_first():
    ledger = [{"type": "s3-bucket", "id": "b"}, {"type": "local-directory", "id": "/d"},
              {"type": "ec2-vpc", "id": "vpc-1"}, {"type": "ec2-internet-gateway", "id": "igw"},
              {"type": "ec2-security-group", "id": "sg-1"}]
    found = [{"type": "ec2-vpc", "id": "vpc-1"},
             {"type": "ec2-internet-gateway-attachment", "id": "igw", "vpc_id": "vpc-1"},
             {"type": "ec2-instance", "id": "i-1"}, {"type": "ec2-instance", "id": "i-2"}]

    merged, added = with_untracked(ledger, found)

    assert [r["id"] for r in added] == ["igw", "i-1", "i-2"]
    assert [(r["type"], r["id"]) for r in merged] == [
        ("s3-bucket", "b"), ("local-directory", "/d"), ("ec2-vpc", "vpc-1"),
        ("ec2-internet-gateway", "igw"), ("ec2-internet-gateway-attachment", "igw"),
        ("ec2-security-group", "sg-1"), ("ec2-instance", "i-1"), ("ec2-instance", "i-2")]


def test_a_transient_error_past_its_deadline_leaves_the_resource(clients, test_chain_files):
    arn = _certificate(clients, test_chain_files)
    fault = FailCalls("DeleteCertificate", "ResourceInUseException")
    clients.register("before-call", fault)

    report = teardown(_state([{"type": "acm-certificate", "id": arn}]), clients,
                      settings=TeardownSettings(retry_deadline_s=0.3, poll_s=0.01))

    assert fault.seen > 1, f"expected the transient error retried, got {fault.seen} try"
    assert [x.id for x in report.left] == [arn]
    assert "ResourceInUseException" in report.left[0].reason
    clients.unregister("before-call", fault)
    clients.acm.delete_certificate(CertificateArn=arn)


def test_unknown_resource_types_are_reported_and_a_compute_can_claim_them(clients, tmp_path):
    class Processes(Compute):
        target_type = "ip"
        deleted = []

        def create_targets(self, stack, clients, ledger):
            raise AssertionError("not used")

        def delete(self, resource, clients):
            if resource["type"] != "local-backend-process":
                return False
            self.deleted.append(resource["id"])
            return True

    state_path = tmp_path / "s.json"
    resources = [{"type": "local-backend-process", "id": "4242"},
                 {"type": "mystery", "id": "m-1"}]
    write_state(state_path, _state(resources))

    report = teardown(read_state(state_path), clients, compute=Processes(),
                      state_path=state_path)

    assert Processes.deleted == ["4242"]
    assert [(x.type, x.id) for x in report.left] == [("mystery", "m-1")]
    assert "unknown resource type 'mystery'" in report.left[0].reason
    assert json.loads(state_path.read_text())["resources"] == [resources[1]]


def _victim(tmp_path):
    """A directory outside any run, with a file in it, that teardown must never remove."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me\n")
    return victim


def test_down_leaves_a_directory_that_is_not_the_runs_own_and_reports_it(clients, tmp_path):
    victim = _victim(tmp_path)
    state_path = tmp_path / "s.json"
    resources = [{"type": "local-directory", "id": str(victim)}]
    write_state(state_path, _state(resources))

    report = down(state_path, clients, settings=QUICK)

    assert (victim / "precious.txt").read_text() == "keep me\n", f"{victim} was removed"
    assert [(x.type, x.id) for x in report.left] == [("local-directory", str(victim))], (
        f"expected {victim} reported as left, got {report.describe()}")
    reason = report.left[0].reason
    assert str(run_directory(state_path)) in reason and "left alone" in reason, reason
    assert read_state(state_path)["resources"] == resources, "the state file must list it"


def test_down_removes_the_runs_own_directory_however_its_entry_spells_it(clients, tmp_path):
    own = run_directory(tmp_path / "s.json")
    (own / "keys").mkdir(parents=True)
    spelled = str(tmp_path / "other" / ".." / "s.json.d")
    write_state(tmp_path / "s.json", _state([{"type": "local-directory", "id": spelled}]))

    report = down(tmp_path / "s.json", clients, settings=QUICK)

    assert report.ok, report.describe()
    assert not own.exists(), f"expected {own} removed"


def test_teardown_without_a_state_path_removes_only_a_directory_next_to_a_state_of_its_run(
        clients, tmp_path):
    """The sandbox tears down from the state it holds: a `FILE.d` next to the state file FILE
    of the same run is removed; another run's directory or any other path is left."""
    victim = _victim(tmp_path)
    own, others = run_directory(tmp_path / "s.json"), run_directory(tmp_path / "o.json")
    own.mkdir()
    others.mkdir()
    write_state(tmp_path / "s.json", _state([]))
    write_state(tmp_path / "o.json", _state([], run_id="other"))
    resources = [{"type": "local-directory", "id": str(path)} for path in (victim, others, own)]

    report = teardown(_state(resources), clients, settings=QUICK)

    assert [r["id"] for r in report.removed] == [str(own)], report.describe()
    assert [x.id for x in report.left] == [str(others), str(victim)], report.describe()
    assert (victim.exists(), others.exists(), own.exists()) == (True, True, False)


# Where to fail: (operation, which occurrence). One point inside each step that makes create
# or change calls, each leaving a different partial stack: nothing yet, a bucket without its
# policy, certificate files without the certificate, a gateway not attached, one subnet, one
# instance, one target group with targets, no load balancer, a load balancer with one
# listener, a whole stack without its access-log attributes.
FAULTS = (
    ("CreateBucket", 1), ("PutBucketPolicy", 1), ("ImportCertificate", 1),
    ("AttachInternetGateway", 1), ("CreateSubnet", 2), ("RunInstances", 2),
    ("RegisterTargets", 2), ("CreateLoadBalancer", 1), ("CreateListener", 2),
    ("ModifyLoadBalancerAttributes", 1),
)
# The waits make no create call: each is failed through the describe call it polls.
WAIT_FAULTS = {"wait-load-balancer": "DescribeLoadBalancers",
               "wait-targets": "DescribeTargetHealth"}


@pytest.fixture(scope="module")
def fault_points(recorded) -> list[tuple[str, int, str]]:
    """(operation, k, step) for each of FAULTS: k is that call's 1-based position among the
    create and change calls of a real build (the `recorded` one), step the build step that
    made it."""
    operations = recorded[2]
    points = []
    for operation, occurrence in FAULTS:
        positions = [(k, step) for k, (step, name) in enumerate(operations, start=1)
                     if name == operation]
        assert len(positions) >= occurrence, f"the build made {operation} {len(positions)} times"
        points.append((operation, *positions[occurrence - 1]))
    return points


def test_every_build_step_is_failed_by_some_fault(fault_points):
    failed = {step for _, _, step in fault_points} | set(WAIT_FAULTS)
    assert sorted(failed) == sorted(BUILD_STEPS), \
        f"expected faults in every step {BUILD_STEPS}; steps never failed: " \
        f"{sorted(set(BUILD_STEPS) - failed)}"


def _assert_torn_down(state_path, clients, before):
    report = teardown(read_state(state_path), clients, settings=QUICK, state_path=state_path)
    assert report.ok, report.describe()
    assert inventory(clients) == before, f"left: {inventory(clients) - before}"
    assert not state_path.exists()


def test_failure_inside_each_step_is_torn_down_completely(
        fault_points, clients, tmp_path, test_chain_files):
    """The k-th create or change call fails (at each point of FAULTS, from the log bucket to
    the access-log attributes); teardown from the ledger then leaves nothing."""
    before = inventory(clients)
    current, steps = {}, []
    clients.register("before-call", lambda **kwargs: current["fault"](**kwargs))
    for operation, k, step in fault_points:
        current["fault"] = fail_nth_mutating_call(k)
        state_path = tmp_path / f"s{k}.json"
        with pytest.raises(Exception, match="InjectedFailure") as raised:
            build(_stack(test_chain_files), clients, Ec2Compute(FAST), state_path, waits=FAST,
                  on_step=steps.append)
        assert operation in str(raised.value), f"call {k}: expected {operation} to fail"
        assert steps[-1] == step, f"call {k}: expected step {step} to fail, got {steps[-1]}"
        assert read_state(state_path)["status"] == "failed"
        current["fault"] = lambda **_: None  # teardown and inventory run unhindered
        _assert_torn_down(state_path, clients, before)


@pytest.mark.parametrize("step", sorted(WAIT_FAULTS))
def test_failure_in_a_wait_is_torn_down_completely(step, clients, tmp_path, test_chain_files):
    """A wait's describe call fails with the whole stack built (up to the access-log
    attributes); teardown from the ledger then leaves nothing."""
    before = inventory(clients)
    state_path = tmp_path / "s.json"
    fault = FailCalls(WAIT_FAULTS[step], "AccessDenied")

    def fail_in(name):
        if name == step:
            clients.register("before-call", fault)

    with pytest.raises(ClientError, match="AccessDenied"):
        build(_stack(test_chain_files), clients, Ec2Compute(FAST), state_path, waits=FAST,
              on_step=fail_in)
    assert fault.seen == 1, f"expected the {step} step's {WAIT_FAULTS[step]} to fail once"
    clients.unregister("before-call", fault)
    assert read_state(state_path)["status"] == "failed"
    _assert_torn_down(state_path, clients, before)
