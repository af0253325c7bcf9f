"""The NLB log-delivery bucket policy: what it grants, to whom, in which partition."""

import json

import pytest

from infra.aws import Clients
from infra.bucket_policy import DELIVERY_PRINCIPAL, allows_delivery, delivery_policy
from infra.network import Ec2Compute
from infra.partitions import PartitionError, dns_suffix, partition_of
from infra.provision import build
from infra.stack import Certificate, Network, Stack
from infra.state import read_state
from infra.teardown import teardown
from infra.waits import Waits

pytestmark = pytest.mark.unit

ACCOUNT = "123456789012"
BUCKET = "nlb-logs"


def _key(prefix: str, account: str = ACCOUNT, region: str = "eu-west-1") -> str:
    start = f"{prefix}/" if prefix else ""
    return (f"{start}AWSLogs/{account}/elasticloadbalancing/{region}/2026/12/03/"
            f"{account}_elasticloadbalancing_{region}_net.lb.0123456789abcdef_"
            "20261203T1200Z_abcdefgh.log.gz")


@pytest.mark.parametrize("prefix", ["nlb-tls", "team/nlb-tls", ""])
def test_policy_lets_delivery_write_under_the_prefix(prefix):
    policy = delivery_policy(BUCKET, prefix, ACCOUNT, "eu-west-1")
    key = _key(prefix)
    assert allows_delivery(policy, BUCKET, key, ACCOUNT, "eu-west-1"), (
        f"expected the delivery policy to allow {key}; policy: {json.dumps(policy)}")


@pytest.mark.parametrize("key, why", [
    ("other/AWSLogs/123456789012/x.log.gz", "another prefix"),
    ("nlb-tls/AWSLogs/210987654321/x.log.gz", "another account's folder"),
    ("nlb-tls/x.log.gz", "outside AWSLogs/ACCOUNT/"),
])
def test_policy_refuses_keys_outside_its_folder(key, why):
    policy = delivery_policy(BUCKET, "nlb-tls", ACCOUNT, "eu-west-1")
    assert not allows_delivery(policy, BUCKET, key, ACCOUNT, "eu-west-1"), f"allowed {why}"


def test_policy_refuses_delivery_for_another_account_or_region():
    policy = delivery_policy(BUCKET, "nlb-tls", ACCOUNT, "eu-west-1")
    other = "210987654321"
    assert not allows_delivery(policy, BUCKET, _key("nlb-tls", other), other, "eu-west-1")
    assert not allows_delivery(policy, BUCKET, _key("nlb-tls"), ACCOUNT, "eu-central-1"), (
        "aws:SourceArn names eu-west-1; a delivery from eu-central-1 must not match")


def test_policy_statements_match_the_reference():
    policy = delivery_policy(BUCKET, "nlb-tls", ACCOUNT, "eu-west-1")
    statements = {s["Action"]: s for s in policy["Statement"]}
    assert set(statements) == {"s3:GetBucketAcl", "s3:PutObject"}
    assert all(s["Effect"] == "Allow" for s in policy["Statement"]), "no Deny statements"
    assert all(s["Principal"] == {"Service": DELIVERY_PRINCIPAL} for s in policy["Statement"])
    acl = statements["s3:GetBucketAcl"]
    assert acl["Resource"] == f"arn:aws:s3:::{BUCKET}"
    put = statements["s3:PutObject"]
    assert put["Resource"] == f"arn:aws:s3:::{BUCKET}/nlb-tls/AWSLogs/{ACCOUNT}/*"
    assert put["Condition"]["StringEquals"] == {
        "s3:x-amz-acl": "bucket-owner-full-control", "aws:SourceAccount": [ACCOUNT]}
    assert put["Condition"]["ArnLike"] == {
        "aws:SourceArn": [f"arn:aws:logs:eu-west-1:{ACCOUNT}:*"]}


@pytest.mark.parametrize("region, partition", [
    ("cn-north-1", "aws-cn"), ("cn-northwest-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov"),
])
def test_policy_uses_the_partition_of_the_region(region, partition):
    policy = delivery_policy(BUCKET, "nlb-tls", ACCOUNT, region)
    text = json.dumps(policy)
    assert "arn:aws:" not in text, f"hard-coded aws partition in {text}"
    put = next(s for s in policy["Statement"] if s["Action"] == "s3:PutObject")
    assert put["Resource"].startswith(f"arn:{partition}:s3:::{BUCKET}/")
    assert put["Condition"]["ArnLike"]["aws:SourceArn"] == [
        f"arn:{partition}:logs:{region}:{ACCOUNT}:*"]
    assert allows_delivery(policy, BUCKET, _key("nlb-tls", region=region), ACCOUNT, region)
    # The same policy built for the aws partition does not grant a China region's delivery.
    commercial = delivery_policy(BUCKET, "nlb-tls", ACCOUNT, "eu-west-1")
    assert not allows_delivery(commercial, BUCKET, _key("nlb-tls"), ACCOUNT, region)


def _statement(**fields):
    base = {"Effect": "Allow", "Principal": {"Service": DELIVERY_PRINCIPAL},
            "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{BUCKET}/nlb-tls/*"}
    base.update(fields)
    return {"Version": "2012-10-17", "Statement": [base]}


@pytest.mark.parametrize("policy, expected, why", [
    (None, False, "no policy"),
    ("{not json", False, "a policy that is not JSON"),
    (_statement(), True, "a plain Allow without conditions"),
    (_statement(Principal="*"), True, "principal *"),
    (_statement(Principal={"AWS": "arn:aws:iam::156460612806:root"}), False,
     "the ALB/Classic per-region ELB account, not the delivery service"),
    (_statement(Action="s3:*"), True, "action wildcard"),
    (_statement(Action="s3:GetObject"), False, "another action"),
    (_statement(Resource=f"arn:aws:s3:::{BUCKET}/nlb-tls/AWSLogs/1234*"), True,
     "resource wildcard inside the account id"),
    (_statement(Condition={"StringEquals": {"s3:x-amz-acl": "private"}}), False,
     "an ACL condition log delivery does not meet"),
    (_statement(Condition={"StringLike": {"aws:SourceArn": "arn:aws:logs:*"}}), True,
     "StringLike on the source ARN"),
    (_statement(Condition={"ArnLike": {"aws:SourceArn": "arn:aws:logs:us-east-1:*:*"}}),
     False, "a source ARN of another region"),
    (_statement(Condition={"NumericLessThan": {"aws:EpochTime": "1"}}), False,
     "an operator the evaluator does not know never grants"),
    (_statement(Condition={"StringNotEquals": {"aws:SourceAccount": "999999999999"}}), True,
     "StringNotEquals another account"),
    (_statement(NotAction="s3:DeleteObject", Action=None), True, "NotAction"),
])
def test_evaluator_decides_like_aws(policy, expected, why):
    if isinstance(policy, dict):
        for statement in policy["Statement"]:
            for name in [k for k, v in statement.items() if v is None]:
                del statement[name]
    got = allows_delivery(policy, BUCKET, "nlb-tls/AWSLogs/123456789012/x.log.gz", ACCOUNT,
                          "eu-west-1")
    assert got is expected, f"{why}: expected {expected}, got {got}"


def test_a_matching_deny_wins_over_the_allow():
    policy = delivery_policy(BUCKET, "nlb-tls", ACCOUNT, "eu-west-1")
    policy["Statement"].append({"Effect": "Deny", "Principal": "*", "Action": "s3:*",
                                "Resource": f"arn:aws:s3:::{BUCKET}/*"})
    assert not allows_delivery(policy, BUCKET, _key("nlb-tls"), ACCOUNT, "eu-west-1")


def test_evaluator_accepts_the_json_text_s3_returns():
    text = json.dumps(delivery_policy(BUCKET, "nlb-tls", ACCOUNT, "eu-west-1"))
    assert allows_delivery(text, BUCKET, _key("nlb-tls"), ACCOUNT, "eu-west-1")


@pytest.mark.parametrize("region, partition, suffix", [
    ("eu-west-1", "aws", "amazonaws.com"),
    ("us-east-1", "aws", "amazonaws.com"),
    ("cn-north-1", "aws-cn", "amazonaws.com.cn"),
    ("us-gov-east-1", "aws-us-gov", "amazonaws.com"),
])
def test_partition_of_region(region, partition, suffix):
    assert (partition_of(region), dns_suffix(region)) == (partition, suffix)


@pytest.mark.parametrize("region", ["eu-west", "EU-WEST-1", "", "us-iso-east-1"])
def test_partition_of_a_bad_region_names_it(region):
    with pytest.raises(PartitionError, match=repr(region).replace("'", ".")):
        partition_of(region)


class _Stop(Exception):
    pass


def test_china_region_log_bucket_is_built_with_the_aws_cn_partition(moto_backends, tmp_path,
                                                                    test_chain_files):
    """The build's bucket step in cn-north-1 (stopped after it: the rest is partition-free)."""
    clients = Clients("cn-north-1")
    # moto has no public AMI parameters in China; the AMI is given.
    files = test_chain_files
    stack = Stack(region="cn-north-1", network=Network(ami_id="ami-0123456789abcdef0"),
                  certificate=Certificate.from_files(files.cert_file, files.key_file))
    state_path = tmp_path / "s.json"

    def stop_after_bucket(name):
        if name == "certificates":
            raise _Stop(name)

    with pytest.raises(_Stop):
        build(stack, clients, Ec2Compute(), state_path, waits=Waits(poll_s=0.01),
              on_step=stop_after_bucket)
    try:
        state = read_state(state_path)
        bucket = state["access_logs"]["bucket"]
        policy = json.loads(clients.s3.get_bucket_policy(Bucket=bucket)["Policy"])
        resources = [s["Resource"] for s in policy["Statement"]]
        assert resources == [f"arn:aws-cn:s3:::{bucket}",
                             f"arn:aws-cn:s3:::{bucket}/nlb-tls/AWSLogs/123456789012/*"]
        assert "arn:aws:" not in json.dumps(policy)
        assert state["partition"] == "aws-cn"
        assert clients.s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] == \
            "cn-north-1"
    finally:
        report = teardown(read_state(state_path), clients, state_path=state_path)
    assert report.ok, report.describe()
