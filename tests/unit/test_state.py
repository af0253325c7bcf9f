"""The state file: every created resource is in it before the build's next call, and it is
replaced atomically or not at all."""

import json
import os
from pathlib import Path

import pytest

from infra.network import Ec2Compute
from infra.provision import build
from infra.stack import Certificate, Network, Stack
from infra.state import Ledger, StateFileError, check_state_path, read_state, write_state
from infra.teardown import teardown
from infra.waits import Waits

pytestmark = pytest.mark.unit

FAST = Waits(poll_s=0.01)

# The calls of a build that create a resource: the ledger type, and how to find its id in
# the call's parameters and answer.
CREATED = {
    "CreateBucket": ("s3-bucket", lambda params, answer: params["Bucket"]),
    "ImportCertificate": ("acm-certificate", lambda params, answer: answer["CertificateArn"]),
    "CreateVpc": ("ec2-vpc", lambda params, answer: answer["Vpc"]["VpcId"]),
    "CreateInternetGateway": ("ec2-internet-gateway",
                              lambda params, answer: answer["InternetGateway"][
                                  "InternetGatewayId"]),
    "AttachInternetGateway": ("ec2-internet-gateway-attachment",
                              lambda params, answer: params["InternetGatewayId"]),
    "CreateSubnet": ("ec2-subnet", lambda params, answer: answer["Subnet"]["SubnetId"]),
    "CreateRouteTable": ("ec2-route-table",
                         lambda params, answer: answer["RouteTable"]["RouteTableId"]),
    "AssociateRouteTable": ("ec2-route-table-association",
                            lambda params, answer: answer["AssociationId"]),
    "CreateSecurityGroup": ("ec2-security-group", lambda params, answer: answer["GroupId"]),
    "RunInstances": ("ec2-instance",
                     lambda params, answer: answer["Instances"][0]["InstanceId"]),
    "CreateTargetGroup": ("elbv2-target-group",
                          lambda params, answer: answer["TargetGroups"][0]["TargetGroupArn"]),
    "CreateLoadBalancer": ("elbv2-load-balancer",
                           lambda params, answer: answer["LoadBalancers"][0][
                               "LoadBalancerArn"]),
    "CreateListener": ("elbv2-listener",
                       lambda params, answer: answer["Listeners"][0]["ListenerArn"]),
}
# Create calls that make no resource of their own: a route goes with its route table.
NOT_RECORDED = {"CreateRoute"}


class _LedgerWatch:
    """botocore hooks that note each resource a create call returns and, at the next call
    the build makes, assert that the state file on disk already lists it."""

    def __init__(self, state_path):
        self.state_path = state_path
        self.pending: tuple[str, str, str] | None = None
        self.checked: list[tuple[str, str]] = []
        self.creates: list[str] = []

    def before(self, params, model, context, **_):
        self.check()
        context["ledger-watch-params"] = params

    def after(self, parsed, model, context, **_):
        if not model.name.startswith(("Create", "Import", "Run", "Attach", "Associate")):
            return
        self.creates.append(model.name)
        if model.name in CREATED:
            kind, find_id = CREATED[model.name]
            self.pending = (model.name, kind, find_id(context["ledger-watch-params"], parsed))

    def check(self):
        if self.pending is None:
            return
        operation, kind, resource_id = self.pending
        self.pending = None
        listed = [(r["type"], r["id"]) for r in
                  json.loads(self.state_path.read_text())["resources"]]
        assert (kind, resource_id) in listed, (
            f"expected {kind} {resource_id} in the state file right after {operation} "
            f"returned; the file lists {listed}")
        self.checked.append((kind, resource_id))


def test_every_resource_is_in_the_state_file_before_the_next_call(clients, tmp_path,
                                                                   test_chain_files):
    files = test_chain_files
    stack = Stack(certificate=Certificate.from_files(files.cert_file, files.key_file,
                                                     files.chain_file, files.ca_bundle),
                  network=Network(ami_id="ami-0123456789abcdef0"))
    state_path = tmp_path / "s.json"
    watch = _LedgerWatch(state_path)
    clients.register("before-parameter-build", watch.before)
    clients.register("after-call", watch.after)

    state = build(stack, clients, Ec2Compute(FAST), state_path, waits=FAST)
    watch.check()  # the last create call of the build, if no call followed it

    clients.unregister("before-parameter-build", watch.before)
    clients.unregister("after-call", watch.after)
    unknown = sorted(set(watch.creates) - set(CREATED) - NOT_RECORDED)
    assert unknown == [], f"create calls this test does not know how to check: {unknown}"
    aws = [(r["type"], r["id"]) for r in state["resources"] if r["type"] != "local-directory"]
    assert watch.checked == aws, f"expected each of {aws} checked once; got {watch.checked}"
    report = teardown(read_state(state_path), clients, state_path=state_path)
    assert report.ok, report.describe()


def test_a_recorded_resource_is_on_disk_when_record_returns(tmp_path):
    state_path = tmp_path / "s.json"
    ledger = Ledger.start(state_path, {"run_id": "abcd1", "region": "eu-west-1",
                                       "resources": []})

    ledger.record("ec2-vpc", "vpc-1")
    ledger.record("ec2-internet-gateway-attachment", "igw-1", vpc_id="vpc-1")

    on_disk = read_state(state_path)["resources"]
    assert on_disk == [{"type": "ec2-vpc", "id": "vpc-1"},
                       {"type": "ec2-internet-gateway-attachment", "id": "igw-1",
                        "vpc_id": "vpc-1"}], f"got {on_disk}"


def test_a_failed_rename_leaves_the_previous_file_and_no_temporary_file(tmp_path,
                                                                        monkeypatch):
    state_path = tmp_path / "s.json"
    previous = {"run_id": "abcd1", "region": "eu-west-1", "resources": [
        {"type": "ec2-vpc", "id": "vpc-1"}]}
    write_state(state_path, previous)
    written = state_path.read_bytes()

    def fail(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        write_state(state_path, {**previous, "resources": []})
    monkeypatch.undo()

    assert state_path.read_bytes() == written, "expected the previous state file unchanged"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["s.json"], f"expected only s.json in the directory; got {left}"


def test_the_state_file_is_replaced_by_a_rename_of_a_complete_file(tmp_path, monkeypatch):
    """What the rename puts in place is already the whole new state, never written in
    place: a reader or a killed run sees the previous file or the new one."""
    state_path = tmp_path / "s.json"
    write_state(state_path, {"run_id": "abcd1", "region": "eu-west-1", "resources": []})
    renames = []
    real_replace = os.replace

    def spy(source, destination):
        renames.append((json.loads(open(source, encoding="utf-8").read()), destination))
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", spy)
    new = {"run_id": "abcd1", "region": "eu-west-1", "resources": [
        {"type": "ec2-vpc", "id": "vpc-2"}]}
    write_state(state_path, new)

    assert [(state, os.fspath(path)) for state, path in renames] == [
        (new, os.fspath(state_path))], f"expected one rename of the new state; got {renames}"
    assert read_state(state_path) == new


def _valid(**fields) -> dict:
    return {"run_id": "abcd1", "region": "eu-west-1", "endpoint_url": "http://127.0.0.1:5000",
            "account_id": "123456789012", "resources": [{"type": "ec2-vpc", "id": "vpc-1"}],
            **fields}


# A state file's text, and fragments the refusal must carry: the field and what is accepted.
MALFORMED = {
    "top level null": ("null", ["top level is null", "accepted an object"]),
    "top level a number": ("5", ["top level is a number", "accepted an object"]),
    "deeply nested": ("[" * 100_000 + "]" * 100_000, ["nests JSON too deeply"]),
    "missing resources": (json.dumps({"run_id": "a", "region": "eu-west-1"}),
                          ["missing resources"]),
    "resources a string": (json.dumps(_valid(resources="vpc-1")),
                           ["resources is a string", "accepted a list of objects"]),
    "resources an object": (json.dumps(_valid(resources={"type": "ec2-vpc"})),
                            ["resources is an object", "accepted a list of objects"]),
    "resources null": (json.dumps(_valid(resources=None)),
                       ["resources is null", "accepted a list of objects"]),
    "resources of numbers": (json.dumps(_valid(resources=[1, 2])),
                             ["resources[0] is a number", "accepted an object with type and id"]),
    "entry without a type": (json.dumps(_valid(resources=[{"id": "vpc-1"}])),
                             ["resources[0].type is None", "accepted a non-empty string"]),
    "entry id a number": (json.dumps(_valid(resources=[{"type": "ec2-vpc", "id": 7}])),
                          ["resources[0].id is 7", "accepted a non-empty string"]),
    "attachment without its VPC": (
        json.dumps(_valid(resources=[{"type": "ec2-internet-gateway-attachment",
                                      "id": "igw-1"}])),
        ["resources[0].vpc_id is None", "accepted a VPC id"]),
    "run id a number": (json.dumps(_valid(run_id=5)), ["run_id is 5", "non-empty string"]),
    "region a number": (json.dumps(_valid(region=5)), ["region 5", "eu-west-1"]),
    "region empty": (json.dumps(_valid(region="")), ["region ''", "eu-west-1"]),
    "endpoint a number": (json.dumps(_valid(endpoint_url=5000)),
                          ["endpoint URL 5000", "accepted an http or https URL"]),
    "endpoint not a URL": (json.dumps(_valid(endpoint_url="127.0.0.1:5000")),
                           ["endpoint URL '127.0.0.1:5000'", "accepted an http or https URL"]),
    "endpoint ftp": (json.dumps(_valid(endpoint_url="ftp://127.0.0.1/")),
                     ["endpoint URL 'ftp://127.0.0.1/'", "accepted an http or https URL"]),
    "account a number": (json.dumps(_valid(account_id=123456789012)),
                         ["account_id is 123456789012", "accepted a 12-digit string"]),
    "keep_logs a string": (json.dumps(_valid(keep_logs="no")),
                           ["keep_logs is 'no'", "accepted true or false"]),
    "not UTF-8": ('{"run_id": "\udcff"}', ["not UTF-8"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_state_file_is_refused_naming_the_file_and_the_field(case, tmp_path):
    text, expected = MALFORMED[case]
    state_path = tmp_path / "s.json"
    state_path.write_bytes(text.encode("utf-8", "surrogateescape"))

    with pytest.raises(StateFileError) as raised:
        read_state(state_path)

    message = str(raised.value)
    for fragment in [str(state_path), *expected]:
        assert fragment in message, f"expected {fragment!r} in the message; got: {message}"


def test_a_valid_state_file_is_read_as_written(tmp_path):
    state = _valid(endpoint_url=None, account_id=None, keep_logs=True, resources=[
        {"type": "ec2-internet-gateway-attachment", "id": "igw-1", "vpc_id": "vpc-1"}])
    write_state(tmp_path / "s.json", state)

    assert read_state(tmp_path / "s.json") == state


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_a_state_path_that_is_not_a_regular_file_is_refused_without_reading_it(kind, tmp_path):
    path = {"directory": tmp_path / "s.json", "fifo": tmp_path / "s.fifo",
            "device": Path("/dev/zero")}[kind]
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)

    with pytest.raises(StateFileError) as raised:
        read_state(path)

    expected = "is a directory" if kind == "directory" else "is not a regular file"
    assert f"state file {path} {expected}" in str(raised.value), str(raised.value)


def test_starting_a_ledger_keeps_a_malformed_state_file_that_lists_resources(tmp_path):
    """Such a file may be the only record of a stack that is still up."""
    state_path = tmp_path / "s.json"
    text = json.dumps(_valid(region=""))
    state_path.write_text(text)

    with pytest.raises(StateFileError) as raised:
        Ledger.start(state_path, _valid(resources=[]))

    assert "may still list resources" in str(raised.value), str(raised.value)
    assert state_path.read_text() == text, "the file must be left as it was"


def test_starting_a_ledger_replaces_a_file_that_is_not_json(tmp_path):
    state_path = tmp_path / "s.json"
    state_path.write_text("{half a state")

    Ledger.start(state_path, _valid(resources=[]))

    assert read_state(state_path) == _valid(resources=[])


def test_check_state_path_accepts_a_new_name_or_an_existing_file_and_makes_it_absolute(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "old.json").write_text("{}")

    checked = [check_state_path("new.json"), check_state_path("old.json")]

    assert checked == [tmp_path / "new.json", tmp_path / "old.json"], checked
