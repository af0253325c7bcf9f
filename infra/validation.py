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
from pathlib import Path

from botocore.exceptions import ClientError
from cryptography import x509

from infra import certs, policies
from infra._log_keys import object_key
from infra.bucket_policy import allows_delivery, log_key_prefix
from infra.partitions import PartitionError, partition_of
from infra.stack import ALPN_POLICIES, Certificate, HealthCheck, Stack, StackConfigError

__all__ = ["validate", "check_against_account", "check_region", "StackConfigError"]

log = logging.getLogger(__name__)

_NAME_PREFIX = re.compile(r"^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$")
_RUN_ID = re.compile(r"^[a-z0-9]{4,10}$")
_MATCHER = re.compile(r"^\d{3}(-\d{3})?(,\d{3}(-\d{3})?)*$")
_LISTENER_PROTOCOLS = ("TLS", "TCP")
_TARGET_GROUP_PROTOCOLS = ("TCP", "TLS")
_HEALTH_CHECK_PROTOCOLS = ("TCP", "HTTP", "HTTPS")
_SCHEMES = ("internet-facing", "internal")
_SOURCES = ("generate", "import", "existing")
_S3_KEY_MAX_BYTES = 1024  # an S3 object key is at most 1024 bytes of UTF-8


def validate(stack: Stack) -> None:
    """Raise StackConfigError listing every bad choice in STACK (files are read, not AWS)."""
    problems = [
        *_check_identity(stack),
        *_check_listeners(stack),
        *_check_certificates(stack),
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


def _check_certificates(stack: Stack) -> list[str]:
    problems = []
    labelled = [("certificate", stack.certificate)] if stack.certificate else []
    labelled += [(f"extra certificate {i + 1}", c) for i, c in enumerate(stack.extra_certificates)]
    for label, certificate in labelled:
        problems += _check_certificate(label, certificate, stack.region)
    return problems


def _check_certificate(label: str, certificate: Certificate, region: str) -> list[str]:
    if certificate.source not in _SOURCES:
        return [f"{label}: source {certificate.source!r}; accepted {', '.join(_SOURCES)}"]
    if certificate.source == "generate":
        return _check_unused_files(label, certificate) + _check_generated(label, certificate)
    if certificate.source == "import":
        return _check_files(label, certificate)
    problems = _check_unused_files(label, certificate)
    if certificate.ca_bundle:
        problems += _check_ca_bundle(label, certificate.ca_bundle)
    return problems + _check_arn(label, certificate.arn, region)


def _check_unused_files(label: str, certificate: Certificate) -> list[str]:
    # Files a generated or an existing certificate would silently ignore: a generated one
    # brings its own chain and CA bundle, an ACM one already holds its chain.
    unused = {"certificate file": certificate.cert_file, "key file": certificate.key_file,
              "chain file": certificate.chain_file}
    if certificate.source == "generate":
        unused["CA bundle"] = certificate.ca_bundle
    if certificate.source == "existing":
        advice = "ACM holds the certificate of an ARN and its chain; leave the file out"
    else:
        advice = "give the certificate file and its key too, or leave it out"
    return [f"{label}: a {name} ({path}) applies to an imported certificate only; {advice}"
            for name, path in unused.items() if path is not None]


def _check_generated(label: str, certificate: Certificate) -> list[str]:
    problems = []
    if certificate.key_type not in certs.GENERATED_KEY_TYPES:
        problems.append(
            f"{label}: key type {certificate.key_type!r} cannot be generated; accepted "
            f"{', '.join(certs.GENERATED_KEY_TYPES)}"
        )
    if not certificate.dns_names:
        problems.append(f"{label}: a generated certificate needs at least one DNS name")
    for name in certificate.dns_names:
        problem = certs.dns_name_problem(name)
        if problem:
            problems.append(f"{label}: {problem}")
    return problems


def _check_files(label: str, certificate: Certificate) -> list[str]:
    files = {"certificate file": certificate.cert_file, "key file": certificate.key_file}
    if certificate.chain_file:
        files["chain file"] = certificate.chain_file
    contents = {}
    for name, path in files.items():
        if path is None:
            return [f"{label}: importing needs a {name}"]
        try:
            contents[name] = certs.read_pem_file(path)
        except certs.CertificateFileError as error:
            return [f"{label}: {name} {error}"]
    cert_pem, key_pem = contents["certificate file"], contents["key file"]
    problems = _check_sizes(label, certificate, cert_pem, key_pem)
    try:
        certs.check_key_matches(cert_pem, key_pem)
        key_type = certs.key_type_of(cert_pem)
    except certs.CertificateError as error:
        return problems + [f"{label} ({certificate.cert_file}, {certificate.key_file}): {error}"]
    problems += _check_key_type(f"{label} {certificate.cert_file}", key_type)
    if "chain file" in contents:
        problems += _check_chain(label, certificate.chain_file, contents["chain file"],
                                 cert_pem)
    if certificate.ca_bundle:
        problems += _check_ca_bundle(label, certificate.ca_bundle)
    return problems


def _check_sizes(label: str, certificate: Certificate, cert_pem: bytes,
                 key_pem: bytes) -> list[str]:
    limits = (("certificate file", certificate.cert_file, cert_pem,
               certs.ACM_CERTIFICATE_MAX_BYTES),
              ("key file", certificate.key_file, key_pem, certs.ACM_PRIVATE_KEY_MAX_BYTES))
    return [f"{label}: {name} {path} is {len(content)} bytes; ACM imports at most {limit}"
            for name, path, content, limit in limits if len(content) > limit]


def _check_chain(label: str, path: Path, chain_pem: bytes, cert_pem: bytes) -> list[str]:
    # ACM takes the intermediates alone, in PEM; the leaf in the chain, or anything else
    # in the file (a private key pasted in), makes clients fail to build a path, or leaks.
    try:
        chain = certs.load_certificates(chain_pem)
    except certs.CertificateError as error:
        return [f"{label}: chain file {path} {error}"]
    leaf = x509.load_pem_x509_certificate(cert_pem)
    if any(member == leaf for member in chain):
        return [f"{label}: chain file {path} contains the leaf certificate itself; accepted "
                "the intermediates only, the leaf excluded"]
    return []


def _check_ca_bundle(label: str, path: Path) -> list[str]:
    try:
        certs.load_certificates(certs.read_pem_file(path), only_certificates=False)
    except certs.CertificateFileError as error:
        return [f"{label}: CA bundle {error}"]
    except certs.CertificateError as error:
        return [f"{label}: CA bundle {path} {error}"]
    return []


def _check_key_type(label: str, key_type: str) -> list[str]:
    if key_type in certs.NLB_KEY_TYPES:
        return []
    # The NLB takes RSA up to 3072 bits and the P-256/P-384/P-521 curves; ACM refuses to attach
    # anything else (an RSA 4096 certificate is the usual surprise).
    return [
        f"{label}: key type {key_type} is not accepted by a network load balancer; accepted "
        f"{', '.join(sorted(certs.NLB_KEY_TYPES))}"
    ]


def _check_arn(label: str, arn: str | None, region: str) -> list[str]:
    parts = (arn or "").split(":")
    if len(parts) < 6 or parts[2] != "acm" or not parts[5].startswith("certificate/"):
        return [f"{label}: {arn!r} is not an ACM certificate ARN "
                "(arn:PARTITION:acm:REGION:ACCOUNT:certificate/ID)"]
    problems = []
    if parts[3] != region:
        problems.append(f"{label}: {arn} is in region {parts[3]}; the stack is in {region}, "
                        "and a listener takes certificates of its own region only")
    try:
        expected = partition_of(region)
    except PartitionError:
        expected = parts[1]  # the bad region is reported by the identity check
    if parts[1] != expected:
        problems.append(f"{label}: {arn} is in partition {parts[1]}; expected {expected}")
    return problems


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
            problems += _check_existing_certificate(label, certificate.arn, clients)
    if stack.network.subnet_ids:
        problems += _check_subnets(stack.network.subnet_ids, clients)
    if problems:
        raise StackConfigError("bad stack choices:\n  " + "\n  ".join(problems))


def _error_code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _check_existing_bucket(stack: Stack, clients, account_id: str) -> list[str]:
    bucket = stack.access_logs.bucket
    try:
        location = clients.s3.get_bucket_location(Bucket=bucket)["LocationConstraint"]
    except ClientError as error:
        return [f"log bucket {bucket}: {_error_code(error) or error}; give an existing bucket "
                "you own in the stack's region, or none to create one"]
    # us-east-1 reports no location constraint (and very old buckets in eu-west-1 say "EU").
    region = {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)
    if region != stack.region:
        return [f"log bucket {bucket} is in region {region}; NLB access logs go only to a "
                f"bucket in the load balancer's region {stack.region}"]
    try:
        policy = clients.s3.get_bucket_policy(Bucket=bucket)["Policy"]
    except ClientError as error:
        if _error_code(error) != "NoSuchBucketPolicy":
            return [f"log bucket {bucket}: cannot read its policy: {_error_code(error)}"]
        policy = None
    key = log_key_prefix(stack.access_logs.prefix, account_id) + "probe.log.gz"
    if not allows_delivery(policy, bucket, key, account_id, stack.region):
        return [f"log bucket {bucket}: its policy does not let delivery.logs.amazonaws.com put "
                f"{key}; add the statements of infra.bucket_policy.delivery_policy"]
    return []


def _check_existing_certificate(label: str, arn: str, clients) -> list[str]:
    try:
        described = clients.acm.describe_certificate(CertificateArn=arn)["Certificate"]
    except ClientError as error:
        return [f"{label} {arn}: {_error_code(error) or error}; give an ACM certificate ARN "
                "of this account and region"]
    problems = []
    if described.get("Status") != "ISSUED":
        problems.append(f"{label} {arn}: status {described.get('Status')}; accepted ISSUED")
    problems += _check_key_type(f"{label} {arn}", described.get("KeyAlgorithm", "?"))
    return problems


def _check_subnets(subnet_ids, clients) -> list[str]:
    try:
        subnets = clients.ec2.describe_subnets(SubnetIds=list(subnet_ids))["Subnets"]
    except ClientError as error:
        return [f"subnets {', '.join(subnet_ids)}: {_error_code(error) or error}"]
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
