"""--existing-nlb discovery (infra.discovery): a load balancer read back as a state file
describes it, and a name that is no network load balancer is refused naming it."""

# Against moto in-process: one TLS listener forwarding to a TLS target group, made directly
# with the API (a whole build would add resources discovery never reads).

import pytest

from infra.discovery import LoadBalancerNotFound, discover_load_balancer

pytestmark = pytest.mark.unit

POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"


def _subnets(clients) -> tuple[str, list[str]]:
    vpc = clients.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])
    vpc_id = vpc["Vpcs"][0]["VpcId"]
    subnets = clients.ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    return vpc_id, [s["SubnetId"] for s in subnets["Subnets"]][:2]


@pytest.fixture(scope="module")
def balancer(module_clients, test_chain_files) -> dict:
    """A network load balancer with access logs on and one TLS listener on 443."""
    clients = module_clients
    vpc_id, subnets = _subnets(clients)
    certificate = clients.acm.import_certificate(
        Certificate=test_chain_files.cert_file.read_bytes(),
        PrivateKey=test_chain_files.key_file.read_bytes(),
        CertificateChain=test_chain_files.chain_file.read_bytes())["CertificateArn"]
    group = clients.elbv2.create_target_group(
        Name="discovered-tls", Protocol="TLS", Port=8443, VpcId=vpc_id,
        TargetType="instance")["TargetGroups"][0]
    made = clients.elbv2.create_load_balancer(
        Name="discovered", Subnets=subnets, Type="network",
        Scheme="internal")["LoadBalancers"][0]
    clients.s3.create_bucket(Bucket="discovered-logs",
                             CreateBucketConfiguration={"LocationConstraint": clients.region})
    clients.elbv2.modify_load_balancer_attributes(
        LoadBalancerArn=made["LoadBalancerArn"], Attributes=[
            {"Key": "access_logs.s3.enabled", "Value": "true"},
            {"Key": "access_logs.s3.bucket", "Value": "discovered-logs"},
            {"Key": "access_logs.s3.prefix", "Value": "team"}])
    listener = clients.elbv2.create_listener(
        LoadBalancerArn=made["LoadBalancerArn"], Protocol="TLS", Port=443, SslPolicy=POLICY,
        Certificates=[{"CertificateArn": certificate}],
        DefaultActions=[{"Type": "forward", "TargetGroupArn": group["TargetGroupArn"]}],
    )["Listeners"][0]
    return {"load_balancer": made, "listener": listener, "group": group,
            "certificate": certificate}


def test_an_existing_load_balancer_is_described_like_a_state_file(clients, balancer):
    made, group = balancer["load_balancer"], balancer["group"]

    state = discover_load_balancer(clients, "discovered")

    expected_listener = {
        "arn": balancer["listener"]["ListenerArn"], "port": 443, "protocol": "TLS",
        "ssl_policy": POLICY, "certificates": [balancer["certificate"]],
        "target_group": {"arn": group["TargetGroupArn"], "name": "discovered-tls",
                         "protocol": "TLS", "port": 8443},
        "address": {"host": made["DNSName"], "port": 443},
    }
    got = {key: state[key] for key in ("load_balancer", "certificate", "access_logs",
                                       "listeners", "resources")}
    assert got == {
        "load_balancer": {"arn": made["LoadBalancerArn"], "name": "discovered",
                          "dns_name": made["DNSName"]},
        "certificate": {"arn": balancer["certificate"], "ca_bundle": None},
        "access_logs": {"bucket": "discovered-logs", "prefix": "team"},
        "listeners": [expected_listener],
        "resources": [],
    }, f"expected the load balancer described read-only, nothing to tear down; got {got}"


def test_a_load_balancer_is_found_by_its_arn_as_by_its_name(clients, balancer):
    by_name = discover_load_balancer(clients, "discovered")
    by_arn = discover_load_balancer(clients, balancer["load_balancer"]["LoadBalancerArn"])
    assert by_arn == by_name, f"expected the same description, got {by_arn} and {by_name}"


@pytest.mark.parametrize("name", [
    "nosuch", "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/net/x/1"])
def test_a_name_or_arn_no_load_balancer_has_is_refused_naming_it(clients, name):
    with pytest.raises(LoadBalancerNotFound) as caught:
        discover_load_balancer(clients, name)
    message = str(caught.value)
    accepted = "expected the name or ARN of a network load balancer"
    assert message.startswith(f"{name}: ") and accepted in message, (
        f"expected the error to start with {name!r} and say {accepted!r}, got {message!r}"
    )


def test_an_application_load_balancer_is_refused_naming_its_type(clients):
    _, subnets = _subnets(clients)
    made = clients.elbv2.create_load_balancer(Name="web", Subnets=subnets,
                                              Type="application")["LoadBalancers"][0]
    try:
        with pytest.raises(LoadBalancerNotFound) as caught:
            discover_load_balancer(clients, "web")
    finally:
        clients.elbv2.delete_load_balancer(LoadBalancerArn=made["LoadBalancerArn"])
    message = str(caught.value)
    assert "of type application" in message and "expected a network load balancer" in message, (
        f"expected the error to name the type application and what is accepted, got {message!r}"
    )
