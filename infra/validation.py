"""Checks of a stack description, all made before any resource is created.

moto accepts every one of these mistakes silently and AWS refuses some of them only halfway
through a build, so the project checks them itself: offline (`validate`) and with read-only
calls against the account (`check_against_account`).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import re
import unicodedata
from collections import Counter

from botocore.exceptions import ClientError

from infra import policies
from infra._log_keys import object_key
from infra.aws import error_code
from infra.certificate_checks import check_certificates, check_existing_certificate
from infra.bucket_policy import allows_delivery, log_key_prefix
from infra.partitions import PartitionError, partition_of
from infra.stack import ALPN_POLICIES, HealthCheck, Stack, StackConfigError

__all__ = ["validate", "check_against_account", "check_region", "StackConfigError"]

log = logging.getLogger(__name__)

_NAME_PREFIX = re.compile(r"^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$")
_RUN_ID = re.compile(r"^[a-z0-9]{4,10}$")
_MATCHER = re.compile(r"^\d{3}(-\d{3})?(,\d{3}(-\d{3})?)*$")
_LISTENER_PROTOCOLS = ("TLS", "TCP")
_TARGET_GROUP_PROTOCOLS = ("TCP", "TLS")
_HEALTH_CHECK_PROTOCOLS = ("TCP", "HTTP", "HTTPS")
_SCHEMES = ("internet-facing", "internal")
_S3_KEY_MAX_BYTES = 1024  # an S3 object key is at most 1024 bytes of UTF-8


def validate(stack: Stack) -> None:
    """Raise StackConfigError listing every bad choice in STACK (files are read, not AWS)."""
    problems = [
        *_check_identity(stack),
        *_check_listeners(stack),
        *check_certificates(stack),
        *_check_access_logs(stack),
        *_check_network(stack),
    ]
    if problems:
        raise StackConfigError("bad stack choices:\n  " + "\n  ".join(problems))


def check_region(value, source: str | None = None) -> str:
    """VALUE when it has the form of a region name of a partition this project serves
    (`eu-west-1`, `cn-north-1`, `us-gov-west-1`); raises StackConfigError naming the value,
    where it came from (SOURCE, e.g. `--region`) and the accepted form.

    Only the form is checked, offline: whether AWS (or moto) knows the region is for it to
    say. moto answers a call for a malformed region with an HTML error page, and an empty
    one would silently fall back to a default region.
    """
    try:
        partition_of(value)
    except PartitionError as error:
        raise StackConfigError(f"{source}: {error}" if source else str(error)) from None
    return value


def _check_identity(stack: Stack) -> list[str]:
    problems = []
    try:
        check_region(stack.region)
    except StackConfigError as error:
        problems.append(str(error))
    if not _NAME_PREFIX.match(stack.name_prefix):
        problems.append(
            f"name prefix {stack.name_prefix!r}: accepted 1-12 lowercase letters, digits and "
            "hyphens, starting and ending with a letter or digit (it starts every resource "
            "name, and bucket names are lowercase)"
        )
    if not _RUN_ID.match(stack.run_id):
        problems.append(f"run id {stack.run_id!r}: accepted 4-10 lowercase letters and digits")
    if stack.scheme not in _SCHEMES:
        problems.append(f"scheme {stack.scheme!r}: accepted {', '.join(_SCHEMES)}")
    if not 1 <= stack.targets_per_group <= 10:
        problems.append(f"targets per group {stack.targets_per_group}: accepted 1-10")
    return problems


def _check_listeners(stack: Stack) -> list[str]:
    problems = []
    if not stack.listeners:
        problems.append("no listeners: a stack needs at least one")
    ports = Counter(listener.port for listener in stack.listeners)
    problems += [
        f"listener port {port} is used by {count} listeners; each port takes one listener"
        for port, count in ports.items() if count > 1
    ]
    groups = Counter(listener.target_group.key for listener in stack.listeners)
    problems += [
        f"target group {key} is used by {count} listeners; give each listener its own"
        for key, count in groups.items() if count > 1
    ]
    for listener in stack.listeners:
        problems += _check_listener(stack, listener)
    tls = [listener.port for listener in stack.listeners if listener.protocol == "TLS"]
    if tls:
        problems += _check_policy(stack)
    return problems


def _check_listener(stack: Stack, listener) -> list[str]:
    problems = []
    where = f"listener {listener.port}"
    if listener.protocol not in _LISTENER_PROTOCOLS:
        problems.append(
            f"{where}: protocol {listener.protocol!r}; accepted {', '.join(_LISTENER_PROTOCOLS)}"
        )
    if listener.protocol == "TLS" and stack.certificate is None:
        problems.append(
            f"{where}: a TLS listener needs a certificate; generate one (the default), give "
            "certificate files, or an ACM certificate ARN"
        )
    problems += _check_port(where, listener.port)
    group = listener.target_group
    if listener.protocol == "TCP" and group.protocol != "TCP":
        problems.append(f"{where}: a TCP listener forwards to TCP target groups only; got "
                        f"{group.protocol} (a TLS target group needs a TLS listener)")
    where = f"target group {group.key}"
    if group.protocol not in _TARGET_GROUP_PROTOCOLS:
        problems.append(
            f"{where}: protocol {group.protocol!r}; accepted {', '.join(_TARGET_GROUP_PROTOCOLS)}"
        )
    problems += _check_port(where, group.port)
    problems += _check_health_check(where, group.health_check)
    return problems


def _check_port(where: str, port) -> list[str]:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return [f"{where}: port {port!r}; accepted an integer 1-65535"]
    return []


def _check_policy(stack: Stack) -> list[str]:
    problems = []
    try:
        policies.get_policy(stack.ssl_policy)
    except policies.UnknownPolicyError as error:
        problems.append(str(error))
    if stack.alpn_policy is not None and stack.alpn_policy not in ALPN_POLICIES:
        problems.append(
            f"ALPN policy {stack.alpn_policy!r}; accepted {', '.join(ALPN_POLICIES)} "
            "(or none)"
        )
    return problems


def _check_health_check(where: str, check: HealthCheck) -> list[str]:
    where = f"{where} health check"
    if check.protocol == "TLS":
        return [f"{where}: protocol TLS is not allowed for health checks; accepted TCP, HTTP, "
                "HTTPS"]
    if check.protocol not in _HEALTH_CHECK_PROTOCOLS:
        return [f"{where}: protocol {check.protocol!r}; accepted "
                f"{', '.join(_HEALTH_CHECK_PROTOCOLS)}"]
    problems = []
    if check.port != "traffic-port" and not (str(check.port).isdigit()
                                             and 1 <= int(check.port) <= 65535):
        problems.append(f"{where}: port {check.port!r}; accepted traffic-port or 1-65535")
    ranges = (
        ("interval", check.interval_s, 5, 300),
        ("timeout", check.effective_timeout_s, 2, 120),
        ("healthy threshold", check.healthy_threshold, 2, 10),
        ("unhealthy threshold", check.unhealthy_threshold, 2, 10),
    )
    for label, value, low, high in ranges:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{where}: {label} {value!r}; accepted {low}-{high}")
    if not problems and check.effective_timeout_s > check.interval_s:
        problems.append(
            f"{where}: timeout {check.effective_timeout_s} s exceeds the interval "
            f"{check.interval_s} s; AWS accepts a timeout up to the interval"
        )
    problems += _check_http_fields(where, check)
    return problems


def _check_http_fields(where: str, check: HealthCheck) -> list[str]:
    http = check.protocol in ("HTTP", "HTTPS")
    problems = []
    if check.path is not None:
        if not http:
            problems.append(f"{where}: a path applies to HTTP and HTTPS checks only")
        elif not check.path.startswith("/") or len(check.path) > 1024:
            problems.append(f"{where}: path {check.path!r}; accepted '/...' up to 1024 chars")
    if check.matcher is not None:
        if not http:
            problems.append(f"{where}: a matcher applies to HTTP and HTTPS checks only")
        elif not _matcher_ok(check.matcher):
            problems.append(
                f"{where}: matcher {check.matcher!r}; accepted HTTP codes 200-599 as a code, "
                "a list (200,202) or a range (200-399)"
            )
    return problems


def _matcher_ok(matcher: str) -> bool:
    if not _MATCHER.match(matcher):
        return False
    codes = [int(c) for c in re.split(r"[,-]", matcher)]
    return all(200 <= code <= 599 for code in codes)


def _check_access_logs(stack: Stack) -> list[str]:
    prefix = stack.access_logs.prefix
    if not stack.access_logs.enabled:
        return []
    if not isinstance(prefix, str):
        return [f"log prefix {prefix!r}: accepted a string, e.g. 'nlb-tls'"]
    problems = _check_prefix_text(prefix, stack.region)
    if prefix.startswith("/") or prefix.endswith("/"):
        problems.append(
            f"log prefix {prefix!r} starts or ends with '/'; accepted a prefix without leading "
            "or trailing slashes, e.g. 'nlb-tls' or 'team/nlb-tls' (AWS skips such attributes)"
        )
    if "AWSLogs" in prefix:
        problems.append(
            f"log prefix {prefix!r} contains 'AWSLogs'; accepted any prefix without it (AWS "
            "adds AWSLogs/ACCOUNT/ itself)"
        )
    return problems


def _check_prefix_text(prefix: str, region: str) -> list[str]:
    problems = []
    odd = sorted({c for c in prefix if c.isspace() or unicodedata.category(c).startswith("C")})
    if odd:
        problems.append(
            f"log prefix {prefix!r} holds whitespace or control characters "
            f"({', '.join(repr(c) for c in odd)}); accepted printable characters without "
            "spaces, e.g. 'team/nlb-tls'")
    if "//" in prefix:
        problems.append(f"log prefix {prefix!r} holds an empty segment ('//'); accepted "
                        "segments separated by single slashes, e.g. 'team/nlb-tls'")
    limit = _longest_prefix_bytes(region)
    if limit is not None and len(prefix.encode("utf-8")) > limit:
        problems.append(
            f"log prefix of {len(prefix.encode('utf-8'))} bytes ({prefix[:40]!r}...) is too "
            f"long: S3 keys are at most {_S3_KEY_MAX_BYTES} bytes and the log object's own "
            f"key takes {_S3_KEY_MAX_BYTES - limit} of them in {region}; accepted at most "
            f"{limit} bytes")
    return problems


def _longest_prefix_bytes(region: str) -> int | None:
    """The longest prefix that leaves room for the longest log object key AWS writes in
    REGION: a 32-character load balancer name, its 16-character id, and a random part of
    the 8 characters every key seen has, with room for twice that. None for a bad region
    (reported on its own)."""
    try:
        check_region(region)
    except StackConfigError:
        return None
    end = datetime.datetime(2000, 12, 31, 23, 55, tzinfo=datetime.timezone.utc)
    key = object_key(None, "0" * 12, region, "n" * 32, "0" * 16, end, "r" * 16)
    return _S3_KEY_MAX_BYTES - len(key) - 1  # the slash after the prefix


def _check_network(stack: Stack) -> list[str]:
    problems = []
    try:
        ipaddress.IPv4Network(stack.network.client_cidr)
    except ValueError:
        problems.append(f"client CIDR {stack.network.client_cidr!r}: accepted an IPv4 network, "
                        "e.g. 203.0.113.0/24")
    try:
        vpc = ipaddress.IPv4Network(stack.network.vpc_cidr)
    except ValueError:
        vpc = None
    # The VPC is split into two subnets; AWS takes VPCs of /16 to /28 and subnets down to /28.
    if vpc is None or not 16 <= vpc.prefixlen <= 27:
        problems.append(f"VPC CIDR {stack.network.vpc_cidr!r}: accepted an IPv4 network of "
                        "size /16 to /27, e.g. 10.80.0.0/16")
    if stack.network.subnet_ids and len(stack.network.subnet_ids) < 2:
        problems.append(
            f"subnets {', '.join(stack.network.subnet_ids)}: give at least two, in two "
            "availability zones"
        )
    return problems


def check_against_account(stack: Stack, clients, account_id: str) -> None:
    """Read-only checks that need the account: an existing log bucket (region and delivery
    policy), existing ACM certificates (issued, key type), user-given subnets.

    Raises StackConfigError listing every problem. Makes no create call.
    """
    problems = []
    if stack.access_logs.enabled and stack.access_logs.bucket:
        problems += _check_existing_bucket(stack, clients, account_id)
    labelled = [("certificate", stack.certificate)] if stack.certificate else []
    labelled += [(f"extra certificate {i + 1}", c) for i, c in enumerate(stack.extra_certificates)]
    for label, certificate in labelled:
        if certificate.source == "existing":
            problems += check_existing_certificate(label, certificate.arn, clients)
    if stack.network.subnet_ids:
        problems += _check_subnets(stack.network.subnet_ids, clients)
    if problems:
        raise StackConfigError("bad stack choices:\n  " + "\n  ".join(problems))


def _check_existing_bucket(stack: Stack, clients, account_id: str) -> list[str]:
    bucket = stack.access_logs.bucket
    try:
        location = clients.s3.get_bucket_location(Bucket=bucket)["LocationConstraint"]
    except ClientError as error:
        return [f"log bucket {bucket}: {error_code(error) or error}; give an existing bucket "
                "you own in the stack's region, or none to create one"]
    # us-east-1 reports no location constraint (and very old buckets in eu-west-1 say "EU").
    region = {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)
    if region != stack.region:
        return [f"log bucket {bucket} is in region {region}; NLB access logs go only to a "
                f"bucket in the load balancer's region {stack.region}"]
    try:
        policy = clients.s3.get_bucket_policy(Bucket=bucket)["Policy"]
    except ClientError as error:
        if error_code(error) != "NoSuchBucketPolicy":
            return [f"log bucket {bucket}: cannot read its policy: {error_code(error)}"]
        policy = None
    key = log_key_prefix(stack.access_logs.prefix, account_id) + "probe.log.gz"
    if not allows_delivery(policy, bucket, key, account_id, stack.region):
        return [f"log bucket {bucket}: its policy does not let delivery.logs.amazonaws.com put "
                f"{key}; add the statements of infra.bucket_policy.delivery_policy"]
    return []


def _check_subnets(subnet_ids, clients) -> list[str]:
    try:
        subnets = clients.ec2.describe_subnets(SubnetIds=list(subnet_ids))["Subnets"]
    except ClientError as error:
        return [f"subnets {', '.join(subnet_ids)}: {error_code(error) or error}"]
    zones = {s["AvailabilityZone"] for s in subnets}
    vpcs = {s["VpcId"] for s in subnets}
    problems = []
    if len(zones) < 2:
        problems.append(f"subnets {', '.join(subnet_ids)} are all in {', '.join(zones)}; "
                        "accepted subnets in at least two availability zones")
    if len(vpcs) != 1:
        problems.append(f"subnets {', '.join(subnet_ids)} are in VPCs {', '.join(sorted(vpcs))};"
                        " accepted subnets of one VPC")
    return problems
