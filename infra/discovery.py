"""Read-only discovery of an existing network load balancer, described like a state file."""

from __future__ import annotations

from botocore.exceptions import ClientError

from infra.aws import Clients

__all__ = ["LoadBalancerNotFound", "discover_load_balancer"]


class LoadBalancerNotFound(LookupError):
    """No network load balancer of the name or ARN is known to the endpoint or account."""


def discover_load_balancer(clients: Clients, name_or_arn: str) -> dict:
    """A state-file-shaped description of an existing load balancer, read-only.

    Listeners, their certificates, policies and target groups, and the access-log
    attributes, all from describe calls; no resource is listed for teardown. Raises
    LoadBalancerNotFound, its message starting with NAME_OR_ARN, when no network load
    balancer has that name or ARN.
    """
    elbv2 = clients.elbv2
    balancer = _described_load_balancer(clients, name_or_arn)
    arn = balancer["LoadBalancerArn"]
    listeners = elbv2.describe_listeners(LoadBalancerArn=arn)["Listeners"]
    entries = [_listener_entry(elbv2, l, balancer["DNSName"]) for l in listeners]
    attributes = {a["Key"]: a["Value"] for a in
                  elbv2.describe_load_balancer_attributes(LoadBalancerArn=arn)["Attributes"]}
    logs = None
    if attributes.get("access_logs.s3.enabled") == "true":
        logs = {"bucket": attributes.get("access_logs.s3.bucket"),
                "prefix": attributes.get("access_logs.s3.prefix", "")}
    default = next((e["certificates"][0] for e in entries if e["certificates"]), None)
    return {
        "target": "aws", "run_id": "existing", "region": clients.region,
        "account_id": clients.account_id(), "endpoint_url": clients.endpoint_url,
        "load_balancer": {"arn": arn, "name": balancer["LoadBalancerName"],
                          "dns_name": balancer["DNSName"]},
        "certificate": {"arn": default, "ca_bundle": None} if default else None,
        "access_logs": logs, "listeners": entries, "resources": [],
    }


def _described_load_balancer(clients: Clients, name_or_arn: str) -> dict:
    key = "LoadBalancerArns" if name_or_arn.startswith("arn:") else "Names"
    where = f"in {clients.region}" + (f" at {clients.endpoint_url}" if clients.endpoint_url
                                      else "")
    try:
        found = clients.elbv2.describe_load_balancers(**{key: [name_or_arn]})["LoadBalancers"]
    except ClientError as error:
        # LoadBalancerNotFound for an unknown name or ARN, ValidationError for a malformed one;
        # anything else (access denied, throttling) is not an answer about the name.
        code = error.response["Error"]["Code"]
        if code not in ("LoadBalancerNotFound", "ValidationError"):
            raise
        found = []
    else:
        code = "no match"
    if not found:
        raise LoadBalancerNotFound(
            f"{name_or_arn}: describe_load_balancers {where} knows no load balancer of that "
            f"name or ARN ({code}); expected the name or ARN of a network load balancer"
        )
    if found[0].get("Type", "network") != "network":
        raise LoadBalancerNotFound(
            f"{name_or_arn}: {found[0]['LoadBalancerArn']} is a load balancer of type "
            f"{found[0]['Type']}; expected a network load balancer"
        )
    return found[0]


def _listener_entry(elbv2, listener: dict, dns_name: str) -> dict:
    forward = next((a for a in listener.get("DefaultActions", [])
                    if a.get("Type") == "forward"), None)
    group = {}
    if forward and forward.get("TargetGroupArn"):
        described = elbv2.describe_target_groups(TargetGroupArns=[forward["TargetGroupArn"]])
        tg = described["TargetGroups"][0]
        group = {"arn": tg["TargetGroupArn"], "name": tg["TargetGroupName"],
                 "protocol": tg["Protocol"], "port": tg["Port"]}
    return {
        "arn": listener["ListenerArn"], "port": listener["Port"],
        "protocol": listener["Protocol"], "ssl_policy": listener.get("SslPolicy"),
        "certificates": [c["CertificateArn"] for c in listener.get("Certificates", [])],
        "target_group": group, "address": {"host": dns_name, "port": listener["Port"]},
    }
