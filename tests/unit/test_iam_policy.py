"""infra/iam-policy.json allows exactly what a build, the suite, teardown and the sweeper call."""

from __future__ import annotations

import copy
import datetime
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.e2e_stack import stack_from_state
from fixtures.expectations import (
    certificate_expectation,
    listener_expectation,
    target_key_algorithm,
)
from fixtures.log_poller import LogPoller
from fixtures.sni import added_sni_certificate
from infra import cli
from infra.access_logs import log_object_body, object_key
from infra.stack import PROJECT, TAG_PROJECT, Network, Stack
from infra.state import read_state
from tests.unit.aws_calls import (
    RECORD_ENV,
    Call,
    CallRecorder,
    compare,
    condition_violations,
    iam_actions,
    policy_actions,
    read_calls,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "infra" / "iam-policy.json"
REGION = "eu-west-1"
MOTO_ACCOUNT = "123456789012"
FAKE_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


@pytest.fixture(scope="module")
def moto_url():
    """A moto server on 127.0.0.1 for this module, with fake credentials in the environment."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in FAKE_ENV.items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_REGION"):
            patch.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def run_cli(*arguments: str) -> None:
    status = cli.main(list(arguments))
    assert status == 0, f"python -m infra {' '.join(arguments)} exited {status}"


def record_e2e_suite(url: str, directory: Path) -> list[Call]:
    """The e2e suite with `--target aws --endpoint-url`, in a subprocess recording its calls:
    the build the suite makes, every read its fixtures and tests make, its teardown and its
    leftover check."""
    sink = directory / "e2e-calls.jsonl"
    env = dict(os.environ, **FAKE_ENV, **{RECORD_ENV: str(sink)})
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "e2e", "tests/e2e", "--target", "aws",
         "--endpoint-url", url, "--region", REGION, "-p", "tests.unit.aws_calls",
         "-q", "-p", "no:cacheprovider", "--basetemp", str(directory / "e2e")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (
        f"the e2e suite against moto exited {done.returncode}:\n{done.stdout[-3000:]}"
        f"\n{done.stderr[-2000:]}")
    calls = read_calls(sink)
    assert calls, "the e2e subprocess recorded no AWS call"
    return calls


def drive_real_account_paths(state_path: Path, recorder: CallRecorder, tmp: Path) -> None:
    """What the suite does only where listeners carry traffic (a real account), driven here
    through the same fixture functions, since under --endpoint-url those tests skip: the
    listener expectations read from the live API (describe_ssl_policies, listener
    certificates, get_certificate), an SNI certificate added and removed, and the log poller
    reading a delivered object."""
    state = read_state(state_path)
    stack = stack_from_state(state, state_path, "built")
    for listener in state["listeners"]:
        if listener["protocol"] == "TLS":
            expectation = listener_expectation(stack.clients, stack.load_balancer_arn,
                                               listener["port"], offline=False, state=state)
            group = expectation.target_group
            if group.protocol == "TLS":  # the backend leg's key type, read from user data
                health = stack.clients.elbv2.describe_target_health(TargetGroupArn=group.arn)
                target = health["TargetHealthDescriptions"][0]["Target"]
                target_key_algorithm(stack.clients, group, target["Id"], target["Port"])
    first = next(l for l in state["listeners"] if l["protocol"] == "TLS")
    name = f"sni.{state['certificate']['domain']}"
    with added_sni_certificate(stack, first["arn"], name, "RSA_2048", tmp / "sni") as added:
        certificate_expectation(stack.clients.acm, added.arn)

    logs = state["access_logs"]
    end = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0)
    end -= datetime.timedelta(minutes=end.minute % 5)
    key = object_key(logs["prefix"], stack.account_id, REGION, stack.load_balancer_name,
                     stack.load_balancer_id, end, "0a1b2c3d")
    with recorder.paused():  # the delivery service writes objects, not the suite
        stack.clients.s3.put_object(Bucket=logs["bucket"], Key=key, Body=log_object_body([]))
    poller = LogPoller(stack.clients.s3, logs["bucket"], logs["prefix"], stack.account_id,
                       REGION)
    assert [o.key for o in poller.poll()] == [key]


@pytest.fixture(scope="module")
def recorded(moto_url, tmp_path_factory) -> list[Call]:
    """Every AWS call of: the e2e suite's own session (build, reads, teardown); `infra up`,
    the real-account-only reads and `infra down` of a bucket holding a log object; and an
    abandoned `infra up` removed by `infra sweep --older-than 0s --yes` as the nightly runs
    it."""
    tmp = tmp_path_factory.mktemp("iam")
    calls = record_e2e_suite(moto_url, tmp)
    target = ("--endpoint-url", moto_url, "--region", REGION)
    with CallRecorder() as recorder:
        run_cli("up", *target, "--state-file", str(tmp / "built.json"))
        drive_real_account_paths(tmp / "built.json", recorder, tmp)
        run_cli("down", "--state-file", str(tmp / "built.json"))
        run_cli("up", *target, "--state-file", str(tmp / "abandoned.json"))
        run_cli("sweep", *target, "--aws-account", MOTO_ACCOUNT, "--older-than", "0s", "--yes")
    return calls + recorder.calls


@pytest.fixture(scope="module")
def policy() -> dict:
    return json.loads(POLICY.read_text())


def test_policy_allows_every_recorded_call_and_no_other_action(recorded, policy):
    difference = compare(recorded, policy)
    assert difference.ok, f"{POLICY.name} differs from the recorded calls:\n" \
        + difference.describe()


def test_check_fails_when_any_action_is_removed_from_a_copy(recorded, policy):
    unnoticed = []
    for action in sorted(policy_actions(policy)):
        reduced = copy.deepcopy(policy)
        for statement in reduced["Statement"]:
            statement["Action"] = [a for a in statement["Action"] if a != action]
        reduced["Statement"] = [s for s in reduced["Statement"] if s["Action"]]
        if action not in compare(recorded, reduced).missing:
            unnoticed.append(action)
    assert unnoticed == [], f"removing these actions went unnoticed: {unnoticed}"


def test_check_fails_when_an_uncalled_action_is_added(recorded, policy):
    widened = copy.deepcopy(policy)
    widened["Statement"][0]["Action"].append("ec2:DescribeKeyPairs")
    assert compare(recorded, widened).unused == ("ec2:DescribeKeyPairs",)


def test_every_call_meets_the_request_conditions_of_its_statements(recorded, policy):
    violations = condition_violations(recorded, policy)
    assert violations == [], "calls the policy's conditions would refuse:\n" + \
        "\n".join(violations)


def test_condition_check_refuses_an_untagged_import_and_a_large_instance(policy):
    untagged = Call("acm", "ImportCertificate", ("acm:ImportCertificate",))
    large = Call("ec2", "RunInstances", ("ec2:RunInstances",), (
        (f"aws:RequestTag/{TAG_PROJECT}", PROJECT), ("ec2:InstanceType", "m5.24xlarge"),
        ("ec2:MetadataHttpTokens", "required")))
    found = condition_violations([untagged, large], policy)
    assert any("acm.ImportCertificate" in v and TAG_PROJECT in v for v in found), found
    assert any("ec2.RunInstances" in v and "m5.24xlarge" in v for v in found), found


def _statements(policy: dict) -> list[dict]:
    return policy["Statement"]


def test_policy_is_allow_only_with_named_statements_and_exact_actions(policy):
    assert policy["Version"] == "2012-10-17"
    sids = [s.get("Sid") for s in _statements(policy)]
    assert len(set(sids)) == len(sids) and all(sids), f"Sids must be unique: {sids}"
    for statement in _statements(policy):
        assert statement["Effect"] == "Allow", statement["Sid"]
        wild = [a for a in statement["Action"] if "*" in a or "?" in a]
        assert wild == [], f"{statement['Sid']}: wildcard actions {wild}"


def test_policy_fits_an_inline_role_policy(policy):
    # IAM counts a policy's size without white space: an inline role policy may hold 10,240
    # characters, a managed policy 6,144, which this one exceeds; the README attaches it
    # inline (put-role-policy).
    size = len(json.dumps(policy, separators=(",", ":")))
    assert size <= 10_240, f"{POLICY.name} is {size} characters; the inline limit is 10,240"


def _unscoped(action: str) -> bool:
    # Describe and List-everything calls take no resource ARN (the service authorization
    # reference lists no resource type for them), so "*" is the only possible scope.
    verb = action.split(":", 1)[1]
    return verb.startswith("Describe") or action in ("acm:ListCertificates",
                                                     "s3:ListAllMyBuckets")


def test_resources_are_arns_of_the_actions_service_and_star_only_where_unavoidable(policy):
    for statement in _statements(policy):
        resources = statement["Resource"]
        resources = [resources] if isinstance(resources, str) else resources
        services = {a.split(":", 1)[0] for a in statement["Action"]}
        if resources == ["*"]:
            scoped = [a for a in statement["Action"] if not _unscoped(a)]
            assert scoped == [], f"{statement['Sid']}: {scoped} can be scoped by resource"
            continue
        for arn in resources:
            service = arn.split(":")[2] if arn.startswith("arn:aws:") else None
            assert service in services, f"{statement['Sid']}: {arn} is not an ARN of {services}"


def test_tag_conditions_name_the_projects_tag_and_names_its_prefix(policy):
    prefix = f"{Stack.name_prefix}-"
    for statement in _statements(policy):
        for pairs in statement.get("Condition", {}).values():
            for key, value in pairs.items():
                if "Tag/" in key:
                    assert key.endswith(f"Tag/{TAG_PROJECT}") and value == PROJECT, (
                        f"{statement['Sid']}: expected the tag {TAG_PROJECT}={PROJECT} "
                        f"(infra.stack), got {key}={value}")
        resources = statement["Resource"]
        for arn in [resources] if isinstance(resources, str) else resources:
            if ":s3:::" in arn or ":elasticloadbalancing:" in arn:
                assert prefix + "*" in arn, f"{statement['Sid']}: {arn} lacks {prefix}*"
    run = next(s for s in _statements(policy) if "ec2:InstanceType" in json.dumps(s))
    assert run["Condition"]["StringEquals"]["ec2:InstanceType"] == Network.instance_type


@pytest.mark.parametrize("service, operation, params, expected", [
    ("s3", "ListObjectsV2", {}, ("s3:ListBucket",)),
    ("s3", "HeadBucket", {}, ("s3:ListBucket",)),
    ("s3", "GetObject", {}, ("s3:GetObject",)),
    ("s3", "DeleteObjects", {"Delete": {"Objects": [{"Key": "k"}]}}, ("s3:DeleteObject",)),
    ("s3", "DeleteObjects", {"Delete": {"Objects": [{"Key": "k", "VersionId": "null"}]}},
     ("s3:DeleteObject", "s3:DeleteObjectVersion")),
    ("s3", "PutBucketEncryption", {}, ("s3:PutEncryptionConfiguration",)),
    ("sts", "GetCallerIdentity", {}, ()),
    ("ssm", "GetParameters", {}, ("ssm:GetParameters",)),
    ("elbv2", "CreateListener", {"Tags": [{"Key": "k", "Value": "v"}]},
     ("elasticloadbalancing:CreateListener", "elasticloadbalancing:AddTags")),
    ("ec2", "CreateVpc", {"TagSpecifications": [{"ResourceType": "vpc", "Tags": []}]},
     ("ec2:CreateVpc", "ec2:CreateTags")),
    ("acm", "ImportCertificate", {"Tags": [{"Key": "k", "Value": "v"}]},
     ("acm:ImportCertificate", "acm:AddTagsToCertificate")),
])
def test_operations_map_to_the_iam_actions_aws_checks(service, operation, params, expected):
    assert iam_actions(service, operation, params) == expected
