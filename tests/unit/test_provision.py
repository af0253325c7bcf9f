"""The build against moto: every resource as asked for, checked through describe calls."""

import base64
import gzip
import json
import logging
import math
import os
import re
import stat

import pytest

from fixtures.moto import REGION, fake_answer, tagged_resources
from infra import certs
from infra.bucket_policy import allows_delivery, delivery_policy
from infra.keystore import KeyStore
from infra.network import Ec2Compute
from infra.provision import build
from infra.stack import (
    AL2023_AMI_PARAMETER, TAG_CREATED_AT, TAG_PROJECT, TAG_RUN_ID, AccessLogs, Certificate,
    Network, Stack,
)
from infra.state import read_state, run_directory
from infra.teardown import teardown
from infra.user_data import render_user_data
from infra.waits import (
    WaitFailed, WaitTimeout, Waits, wait_for_load_balancer, wait_for_targets, wait_until,
)

pytestmark = pytest.mark.unit

FAST = Waits(poll_s=0.01)


def _imported(files) -> Certificate:
    return Certificate.from_files(files.cert_file, files.key_file, files.chain_file,
                                  files.ca_bundle)


@pytest.fixture(scope="module")
def built(module_clients, test_chain_files, tmp_path_factory):
    """One default stack (importing the session's chain) for the describe checks."""
    clients = module_clients
    stack = Stack(certificate=_imported(test_chain_files))
    state_path = tmp_path_factory.mktemp("built") / "stack.json"
    state = build(stack, clients, Ec2Compute(FAST), state_path, waits=FAST)
    yield stack, state, state_path
    report = teardown(read_state(state_path), clients, state_path=state_path)
    assert report.ok, report.describe()


def _of(state, kind):
    return [r["id"] for r in state["resources"] if r["type"] == kind]


def test_listeners_have_protocols_ports_policy_certificate_and_actions(built, clients):
    stack, state, _ = built
    described = clients.elbv2.describe_listeners(
        LoadBalancerArn=state["load_balancer"]["arn"])["Listeners"]
    groups = {g["TargetGroupArn"]: g for g in clients.elbv2.describe_target_groups(
        LoadBalancerArn=state["load_balancer"]["arn"])["TargetGroups"]}
    got = sorted(
        (l["Port"], l["Protocol"], l["SslPolicy"], [c["CertificateArn"] for c in l["Certificates"]],
         [(a["Type"], groups[a["TargetGroupArn"]]["Protocol"], groups[a["TargetGroupArn"]]["Port"])
          for a in l["DefaultActions"]])
        for l in described)
    certificate = state["certificate"]["arn"]
    assert got == [
        (443, "TLS", "ELBSecurityPolicy-2016-08", [certificate], [("forward", "TCP", 8080)]),
        (9443, "TLS", "ELBSecurityPolicy-2016-08", [certificate], [("forward", "TLS", 8443)]),
    ]


def test_target_groups_have_protocols_ports_and_health_checks(built, clients):
    _, state, _ = built
    described = clients.elbv2.describe_target_groups(
        TargetGroupArns=_of(state, "elbv2-target-group"))["TargetGroups"]
    got = sorted((g["Protocol"], g["Port"], g["TargetType"], g["HealthCheckProtocol"],
                  g["HealthCheckPort"], g["HealthCheckIntervalSeconds"],
                  g["HealthyThresholdCount"], g["UnhealthyThresholdCount"],
                  g["HealthCheckEnabled"], g["VpcId"]) for g in described)
    vpc = state["network"]["vpc_id"]
    assert got == [("TCP", 8080, "instance", "TCP", "traffic-port", 10, 2, 2, True, vpc),
                   ("TLS", 8443, "instance", "TCP", "traffic-port", 10, 2, 2, True, vpc)]
    assert all(g["HealthCheckTimeoutSeconds"] <= 10 for g in described), described


def test_every_target_group_has_two_instances_registered(built, clients):
    _, state, _ = built
    instances = set(_of(state, "ec2-instance"))
    assert len(instances) == 2
    for arn in _of(state, "elbv2-target-group"):
        health = clients.elbv2.describe_target_health(TargetGroupArn=arn)
        registered = {d["Target"]["Id"] for d in health["TargetHealthDescriptions"]}
        assert registered == instances, f"{arn}: expected {instances}, got {registered}"


def test_load_balancer_is_an_internet_facing_network_load_balancer(built, clients):
    _, state, _ = built
    balancer = clients.elbv2.describe_load_balancers(
        LoadBalancerArns=[state["load_balancer"]["arn"]])["LoadBalancers"][0]
    assert (balancer["Type"], balancer["Scheme"], balancer["State"]["Code"]) == (
        "network", "internet-facing", "active")
    assert sorted(z["SubnetId"] for z in balancer["AvailabilityZones"]) == sorted(
        _of(state, "ec2-subnet"))
    assert len({z["ZoneName"] for z in balancer["AvailabilityZones"]}) == 2
    assert balancer["SecurityGroups"] == state["network"]["security_group_ids"]


def test_access_log_attributes_point_at_the_bucket_and_prefix(built, clients):
    stack, state, _ = built
    attributes = {a["Key"]: a["Value"] for a in clients.elbv2.describe_load_balancer_attributes(
        LoadBalancerArn=state["load_balancer"]["arn"])["Attributes"]}
    expected = {"access_logs.s3.enabled": "true",
                "access_logs.s3.bucket": stack.bucket_name("123456789012"),
                "access_logs.s3.prefix": "nlb-tls"}
    assert {k: attributes.get(k) for k in expected} == expected


def test_log_bucket_policy_lets_delivery_write_under_the_prefix(built, clients):
    stack, state, _ = built
    bucket = state["access_logs"]["bucket"]
    policy = json.loads(clients.s3.get_bucket_policy(Bucket=bucket)["Policy"])
    assert policy == delivery_policy(bucket, "nlb-tls", "123456789012", REGION)
    key = "nlb-tls/AWSLogs/123456789012/elasticloadbalancing/eu-west-1/2026/01/01/x.log.gz"
    assert allows_delivery(policy, bucket, key, "123456789012", REGION)
    assert not allows_delivery(policy, bucket, "other/AWSLogs/123456789012/x.log.gz",
                               "123456789012", REGION)


def test_log_bucket_is_private_encrypted_owner_enforced_and_tagged(built, clients):
    stack, state, _ = built
    s3, bucket = clients.s3, state["access_logs"]["bucket"]
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                     "BlockPublicPolicy": True, "RestrictPublicBuckets": True}
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    ownership = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    assert ownership == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] == REGION
    tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}
    assert tags == stack.tags()


def test_certificate_is_imported_with_its_chain(built, clients, test_chain_files):
    _, state, _ = built
    arn = state["certificate"]["arn"]
    described = clients.acm.describe_certificate(CertificateArn=arn)["Certificate"]
    assert (described["DomainName"], described["KeyAlgorithm"], described["Type"]) == (
        "imported.nlb-tls-suite.test", "RSA_2048", "IMPORTED")
    fetched = clients.acm.get_certificate(CertificateArn=arn)
    assert fetched["Certificate"].strip() == test_chain_files.cert_file.read_text().strip()
    # moto appends its own Amazon CA after the imported chain; the imported part comes first.
    assert fetched["CertificateChain"].startswith(
        test_chain_files.chain_file.read_text().strip())


def _tags_of(clients, resource):
    kind, rid = resource["type"], resource["id"]
    if kind.startswith("elbv2-"):
        described = clients.elbv2.describe_tags(ResourceArns=[rid])["TagDescriptions"][0]
        return described["Tags"]
    if kind == "acm-certificate":
        return clients.acm.list_tags_for_certificate(CertificateArn=rid)["Tags"]
    if kind == "s3-bucket":
        return clients.s3.get_bucket_tagging(Bucket=rid)["TagSet"]
    answer = clients.ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [rid]}])
    return answer["Tags"]


UNTAGGABLE = {"ec2-internet-gateway-attachment", "ec2-route-table-association",
              "local-directory"}


def test_every_taggable_resource_carries_the_run_tags(built, clients):
    stack, state, _ = built
    expected = stack.tags()
    for resource in state["resources"]:
        if resource["type"] in UNTAGGABLE:
            continue
        tags = {t["Key"]: t["Value"] for t in _tags_of(clients, resource)}
        got = {k: tags.get(k) for k in expected}
        assert got == expected, f"{resource['type']} {resource['id']}: got {got}"
    assert expected[TAG_PROJECT] == "nlb-tls-suite" and expected[TAG_RUN_ID] == stack.run_id
    assert expected[TAG_CREATED_AT].endswith("Z")
    found = sorted(tagged_resources(clients, stack.run_id))
    ledger = sorted(f"{r['type']} {r['id']}" for r in state["resources"]
                    if r["type"] != "local-directory")
    assert found == ledger, "the tags alone must find everything the ledger lists"


def test_instances_require_imdsv2_have_no_key_and_carry_the_user_data(built, clients):
    stack, state, _ = built
    image = clients.ssm.get_parameter(Name=AL2023_AMI_PARAMETER)["Parameter"]["Value"]
    expected_data = render_user_data(stack.target_groups, stack.run_id)
    for instance_id in _of(state, "ec2-instance"):
        instance = clients.ec2.describe_instances(
            InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert "KeyName" not in instance, f"{instance_id} has key pair {instance.get('KeyName')}"
        assert (instance["ImageId"], instance["InstanceType"]) == (image, "t3.micro")
        attribute = clients.ec2.describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]
        assert base64.b64decode(attribute) == expected_data
        script = gzip.decompress(base64.b64decode(attribute)).decode()
        assert "python3 -m servers.http_server -l 0.0.0.0 -p 8080" in script
        assert "python3 -m servers.https_server -l 0.0.0.0 -p 8443" in script


def test_security_groups_admit_listener_ports_and_the_load_balancer_only(built, clients):
    stack, state, _ = built
    lb_group = state["network"]["security_group_ids"][0]
    groups = clients.ec2.describe_security_groups(
        GroupIds=_of(state, "ec2-security-group"))["SecurityGroups"]
    rules = {g["GroupId"]: sorted(
        (p["FromPort"], p["ToPort"], tuple(r["CidrIp"] for r in p.get("IpRanges", [])),
         tuple(r["GroupId"] for r in p.get("UserIdGroupPairs", [])))
        for p in g["IpPermissions"]) for g in groups}
    target_group = next(g for g in rules if g != lb_group)
    assert rules[lb_group] == [(443, 443, ("0.0.0.0/0",), ()), (9443, 9443, ("0.0.0.0/0",), ())]
    assert rules[target_group] == [(8080, 8080, (), (lb_group,)), (8443, 8443, (), (lb_group,))]
    instance_groups = {g["GroupId"] for r in clients.ec2.describe_instances(
        InstanceIds=_of(state, "ec2-instance"))["Reservations"]
        for i in r["Instances"] for g in i["SecurityGroups"]}
    assert instance_groups == {target_group}


def test_state_file_holds_the_schema_and_private_files_are_private(built):
    stack, state, state_path = built
    on_disk = read_state(state_path)
    assert on_disk == state
    for key in ("target", "run_id", "region", "account_id", "endpoint_url", "load_balancer",
                "certificate", "access_logs", "listeners", "resources"):
        assert key in on_disk, f"state file lacks {key}"
    assert (on_disk["target"], on_disk["region"], on_disk["account_id"],
            on_disk["endpoint_url"], on_disk["status"]) == (
        "aws", REGION, "123456789012", None, "ready")
    listener = next(l for l in on_disk["listeners"] if l["port"] == 443)
    assert listener["address"] == {"host": on_disk["load_balancer"]["dns_name"], "port": 443}
    assert listener["target_group"]["protocol"] == "TCP"
    kinds = [r["type"] for r in on_disk["resources"]]
    assert kinds.index("s3-bucket") < kinds.index("acm-certificate") < kinds.index("ec2-vpc") \
        < kinds.index("ec2-instance") < kinds.index("elbv2-target-group") \
        < kinds.index("elbv2-load-balancer") < kinds.index("elbv2-listener"), kinds
    assert stat.S_IMODE(os.stat(state_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(run_directory(state_path)).st_mode) == 0o700
    keystore = KeyStore(on_disk["keystore"])
    leaf = open(on_disk["certificate"]["cert_file"], "rb").read()
    key = keystore.key_for_certificate(leaf)
    certs.check_key_matches(leaf, key)
    key_path = keystore.directory / f"{certs.public_key_fingerprint(leaf)}.pem"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600


def test_generated_certificates_policy_alpn_and_sni_reach_the_listeners(clients, tmp_path):
    stack = Stack(ssl_policy="ELBSecurityPolicy-TLS13-1-2-2021-06", alpn_policy="HTTP2Preferred",
                  certificate=Certificate(dns_names=("main.test",), key_type="EC_prime256v1"),
                  extra_certificates=(Certificate(dns_names=("other.test",),
                                                  key_type="EC_prime256v1"),),
                  network=Network(ami_id="ami-0123456789abcdef0"))
    state_path = tmp_path / "s.json"
    state = build(stack, clients, Ec2Compute(FAST), state_path, waits=FAST)
    try:
        default, extra = state["certificate"], state["sni_certificates"][0]
        for listener in clients.elbv2.describe_listeners(
                LoadBalancerArn=state["load_balancer"]["arn"])["Listeners"]:
            assert (listener["SslPolicy"], listener["AlpnPolicy"]) == (
                "ELBSecurityPolicy-TLS13-1-2-2021-06", ["HTTP2Preferred"])
            listed = clients.elbv2.describe_listener_certificates(
                ListenerArn=listener["ListenerArn"])["Certificates"]
            assert {(c["CertificateArn"], c.get("IsDefault", False)) for c in listed} >= {
                (extra["arn"], False)}, listed
            # AWS lists only the default certificate here; moto lists the added ones after it.
            assert listener["Certificates"][0]["CertificateArn"] == default["arn"], listener
        assert clients.acm.describe_certificate(CertificateArn=extra["arn"])["Certificate"][
            "DomainName"] == "other.test"
        assert stat.S_IMODE(os.stat(default["key_file"]).st_mode) == 0o600
        key_files = [default["key_file"], extra["key_file"]]
    finally:
        report = teardown(read_state(state_path), clients, state_path=state_path)
    assert report.ok, report.describe()
    assert not any(os.path.exists(p) for p in key_files), "generated keys must be removed"
    assert not run_directory(state_path).exists()


def test_existing_bucket_and_certificate_are_used_not_created(clients, tmp_path,
                                                              test_chain_files):
    bucket = f"given-logs-{os.urandom(4).hex()}"
    clients.s3.create_bucket(Bucket=bucket,
                             CreateBucketConfiguration={"LocationConstraint": REGION})
    clients.s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(
        delivery_policy(bucket, "given", "123456789012", REGION)))
    arn = clients.acm.import_certificate(
        Certificate=test_chain_files.cert_file.read_bytes(),
        PrivateKey=test_chain_files.key_file.read_bytes())["CertificateArn"]
    stack = Stack(certificate=Certificate.existing(arn),
                  access_logs=AccessLogs(bucket=bucket, prefix="given"),
                  network=Network(ami_id="ami-0123456789abcdef0"))
    state_path = tmp_path / "s.json"
    state = build(stack, clients, Ec2Compute(FAST), state_path, waits=FAST)
    report = teardown(read_state(state_path), clients, state_path=state_path)
    assert report.ok, report.describe()
    kinds = {r["type"] for r in state["resources"]}
    assert not kinds & {"s3-bucket", "acm-certificate", "local-directory"}, kinds
    assert state["certificate"]["arn"] == arn and state["access_logs"]["bucket"] == bucket
    # Still there after teardown: they were the user's.
    clients.s3.head_bucket(Bucket=bucket)
    clients.acm.describe_certificate(CertificateArn=arn)
    clients.s3.delete_bucket(Bucket=bucket)
    clients.acm.delete_certificate(CertificateArn=arn)


def test_target_wait_polls_describe_target_health_until_healthy(built, clients, caplog):
    """The wait asks the API each poll (here it says `initial` three times per group)."""
    _, state, _ = built
    answers = {"count": 0}

    def initial_three_times(model, **_):
        if model.name != "DescribeTargetHealth" or answers["count"] >= 6:
            return None
        answers["count"] += 1
        return fake_answer({"TargetHealthDescriptions": [
            {"Target": {"Id": "i-0", "Port": 8080},
             "TargetHealth": {"State": "initial", "Reason": "Elb.RegistrationInProgress"}}]})

    clients.register("before-call", initial_three_times)
    caplog.set_level(logging.INFO, logger="infra.waits")
    wait_for_targets(clients, [g["arn"] for g in state["target_groups"]], FAST)
    assert answers["count"] == 6, "expected three polls answered `initial` for each group"
    waiting = [r.getMessage() for r in caplog.records if "waiting for targets" in r.getMessage()]
    assert waiting, "expected a progress line while targets were initial"
    assert "Elb.RegistrationInProgress" in waiting[0] and "deadline 1200 s" in waiting[0]


class _Clock:
    """A fake monotonic clock that sleeping advances."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_a_long_wait_reports_progress_at_least_every_15_seconds(caplog):
    clock, polls = _Clock(), []

    def probe():
        polls.append(clock.now)
        return clock.now >= 100, f"poll {len(polls)}"

    caplog.set_level(logging.INFO, logger="infra.waits")
    elapsed = wait_until("the thing", probe, deadline_s=300, poll_s=10, progress_s=60,
                         clock=clock, sleep=clock.sleep)
    assert elapsed == 100
    lines = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith("waiting for the thing")]
    times = [float(re.search(r"; (\d+) s elapsed", line).group(1)) for line in lines]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert times[0] == 0 and gaps and max(gaps) <= 15, f"progress lines at {times}"
    assert all("deadline 300 s" in line and "poll" in line for line in lines), lines


def test_a_wait_past_its_deadline_names_the_last_status():
    clock = _Clock()
    with pytest.raises(WaitTimeout, match=r"load balancer x.* 600 s.*state provisioning"):
        wait_until("load balancer x to be active", lambda: (False, "state provisioning"),
                   deadline_s=600, poll_s=15, clock=clock, sleep=clock.sleep)
    assert clock.now == 600


@pytest.mark.parametrize("deadline_s", [math.nan, math.inf, -1.0])
def test_a_wait_with_a_deadline_it_could_never_reach_is_refused(deadline_s):
    clock = _Clock()
    with pytest.raises(ValueError) as caught:
        wait_until("the thing", lambda: (False, "-"), deadline_s=deadline_s, poll_s=1,
                   clock=clock, sleep=clock.sleep)
    message = str(caught.value)
    assert f"deadline_s={deadline_s!r}" in message and "finite" in message, (
        f"expected the error to name deadline_s={deadline_s!r} and what is accepted, got "
        f"{message!r}"
    )
    assert clock.now == 0, f"expected no sleep before the refusal, got {clock.now} s"


def test_a_failed_load_balancer_ends_the_wait(built, clients):
    _, state, _ = built
    arn = state["load_balancer"]["arn"]
    clients.register("before-call", lambda model, **_: fake_answer({"LoadBalancers": [
        {"LoadBalancerArn": arn, "State": {"Code": "failed", "Reason": "no capacity"}}]})
        if model.name == "DescribeLoadBalancers" else None)
    with pytest.raises(WaitFailed, match="no capacity"):
        wait_for_load_balancer(clients, arn, FAST)
