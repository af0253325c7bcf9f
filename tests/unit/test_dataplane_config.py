"""Reading the load balancer's configuration through the APIs, and noticing its changes."""

import boto3
import pytest

from infra import certs
from infra.sandbox.config import ConfigReader, ConfigWatcher

pytestmark = pytest.mark.unit

REGION = "eu-west-1"


@pytest.fixture(scope="module")
def balancer(moto_backends):
    """A network load balancer with one TLS listener, an SNI certificate and a target group."""
    elbv2 = boto3.client("elbv2", region_name=REGION)
    acm = boto3.client("acm", region_name=REGION)
    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"][:2]]
    arns = []
    for name in ("default.test", "sni.test"):
        chain = certs.generate_chain([name])
        arns.append(acm.import_certificate(Certificate=chain.leaf_pem, PrivateKey=chain.key_pem,
                                           CertificateChain=chain.chain_pem)["CertificateArn"])
    group = elbv2.create_target_group(
        Name="config-tg", Protocol="TLS", Port=8443, VpcId=vpc, TargetType="ip",
        HealthCheckProtocol="HTTPS", HealthCheckPath="/ping", HealthCheckIntervalSeconds=10,
        HealthyThresholdCount=2, Matcher={"HttpCode": "200-299"},
    )["TargetGroups"][0]["TargetGroupArn"]
    elbv2.register_targets(TargetGroupArn=group, Targets=[{"Id": "127.0.0.1", "Port": 9001}])
    lb = elbv2.create_load_balancer(Name="config-lb", Type="network", Scheme="internal",
                                    Subnets=subnets)["LoadBalancers"][0]["LoadBalancerArn"]
    listener = elbv2.create_listener(
        LoadBalancerArn=lb, Protocol="TLS", Port=443, SslPolicy="ELBSecurityPolicy-2016-08",
        Certificates=[{"CertificateArn": arns[0]}], AlpnPolicy=["HTTP2Preferred"],
        DefaultActions=[{"Type": "forward", "TargetGroupArn": group}],
    )["Listeners"][0]["ListenerArn"]
    elbv2.add_listener_certificates(ListenerArn=listener,
                                    Certificates=[{"CertificateArn": arns[1]}])
    elbv2.modify_load_balancer_attributes(LoadBalancerArn=lb, Attributes=[
        {"Key": "access_logs.s3.enabled", "Value": "true"},
        {"Key": "access_logs.s3.bucket", "Value": "logs"},
        {"Key": "access_logs.s3.prefix", "Value": "p"},
    ])
    return {"elbv2": elbv2, "acm": acm, "lb": lb, "listener": listener, "group": group,
            "certificates": arns}


def _reader(balancer, name="config-lb"):
    return ConfigReader(balancer["elbv2"], balancer["acm"], name)


def test_reader_returns_none_until_the_load_balancer_exists(balancer):
    assert _reader(balancer, "not-built-yet").read() is None


def test_reader_reads_listener_certificates_targets_and_log_attributes(balancer):
    config = _reader(balancer).read()
    (listener,) = config.listeners
    assert (listener.port, listener.protocol, listener.ssl_policy, listener.alpn_policy) == (
        443, "TLS", "ELBSecurityPolicy-2016-08", "HTTP2Preferred")
    assert listener.default_certificate_arn == balancer["certificates"][0]
    assert listener.certificate_arns == (balancer["certificates"][1],)
    assert listener.target_group_arn == balancer["group"]
    assert listener.id == balancer["listener"].rsplit("/", 1)[-1]
    group = config.target_group(balancer["group"])
    assert [(t.id, t.port) for t in group.targets] == [("127.0.0.1", 9001)]
    check = group.health_check
    assert (check.protocol, check.path, check.interval_seconds, check.healthy_threshold,
            check.matcher) == ("HTTPS", "/ping", 10, 2, "200-299"), check
    assert (config.access_logs.enabled, config.access_logs.bucket,
            config.access_logs.prefix) == (True, "logs", "p")
    assert all(version.serial for version in config.certificates)


def test_watcher_calls_back_only_when_the_configuration_changes(balancer):
    seen = []
    watcher = ConfigWatcher(_reader(balancer), seen.append)
    watcher.poll()
    watcher.poll()
    assert len(seen) == 1, f"expected one callback for two identical reads, got {len(seen)}"
    elbv2 = balancer["elbv2"]
    elbv2.modify_listener(ListenerArn=balancer["listener"],
                          SslPolicy="ELBSecurityPolicy-TLS13-1-2-2021-06")
    elbv2.modify_load_balancer_attributes(LoadBalancerArn=balancer["lb"], Attributes=[
        {"Key": "access_logs.s3.enabled", "Value": "false"}])
    watcher.poll()
    assert len(seen) == 2, "expected a callback after modify_listener"
    assert seen[-1].listeners[0].ssl_policy == "ELBSecurityPolicy-TLS13-1-2-2021-06"
    assert seen[-1].access_logs.enabled is False


def test_deleted_certificate_shows_as_gone(balancer):
    balancer["acm"].delete_certificate(CertificateArn=balancer["certificates"][1])
    versions = {v.arn: v.serial for v in _reader(balancer).read().certificates}
    assert versions[balancer["certificates"][1]] is None, f"expected no serial, got {versions}"
    assert versions[balancer["certificates"][0]] is not None


def test_failed_read_keeps_the_last_configuration(balancer):
    class FailingAfterFirstRead:
        def __init__(self, reader):
            self.reader, self.calls = reader, 0

        def read(self):
            self.calls += 1
            if self.calls > 1:
                raise ConnectionError("endpoint gone")
            return self.reader.read()

    watcher = ConfigWatcher(FailingAfterFirstRead(_reader(balancer)), lambda config: None)
    current = watcher.poll()
    assert current is not None
    assert watcher.poll() is current, "expected the last good configuration after a failed read"
