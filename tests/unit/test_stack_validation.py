"""Every bad stack choice fails before any create call, naming the value and what is accepted."""

import dataclasses
import datetime
import json
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from infra import certs
from infra.bucket_policy import delivery_policy
from infra.network import Ec2Compute
from infra.provision import build
from infra.stack import (
    AccessLogs, Certificate, HealthCheck, Listener, Network, Stack, StackConfigError,
    TargetGroup,
)
from infra.aws import Clients
from infra.validation import check_against_account, check_region, validate

pytestmark = pytest.mark.unit


def _self_signed(directory, name, key):
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Certificate.from_files(cert_file, key_file)


@pytest.fixture(scope="module")
def odd_keys(tmp_path_factory):
    """Certificates with keys the NLB refuses: RSA 4096 and the secp256k1 curve."""
    directory = tmp_path_factory.mktemp("odd-keys")
    return {
        "RSA_4096": _self_signed(directory, "rsa4096",
                                 rsa.generate_private_key(public_exponent=65537, key_size=4096)),
        "EC_secp256k1": _self_signed(directory, "k1", ec.generate_private_key(ec.SECP256K1())),
    }


@pytest.fixture
def mismatched(test_chain_files, tmp_path):
    """The session chain's certificate with the key of another chain."""
    other = certs.generate_chain(["other.test"], "EC_prime256v1").write(tmp_path, "other")
    return Certificate.from_files(test_chain_files.cert_file, other.key_file)


def _listeners(**health):
    return (Listener(443, TargetGroup("TCP", 8080, HealthCheck(**health))),)


OFFLINE_CASES = {
    "unknown policy": (dict(ssl_policy="ELBSecurityPolicy-2099-01"),
                       ["ELBSecurityPolicy-2099-01", "ELBSecurityPolicy-2016-08"]),
    "prefix leading slash": (dict(access_logs=AccessLogs(prefix="/logs")),
                             ["'/logs'", "'nlb-tls'"]),
    "prefix trailing slash": (dict(access_logs=AccessLogs(prefix="logs/")), ["'logs/'"]),
    "prefix AWSLogs": (dict(access_logs=AccessLogs(prefix="x/AWSLogs")), ["'x/AWSLogs'",
                                                                         "without it"]),
    "duplicate ports": (dict(listeners=(Listener(443, TargetGroup("TCP", 8080)),
                                        Listener(443, TargetGroup("TLS", 8443)))),
                        ["listener port 443", "each port takes one listener"]),
    "TLS without certificate": (dict(certificate=None), ["listener 443", "needs a certificate"]),
    "TCP listener to TLS group": (dict(listeners=(Listener(80, TargetGroup("TLS", 8443),
                                                           protocol="TCP"),)),
                                  ["listener 80", "TCP target groups only; got TLS"]),
    "bad ALPN": (dict(alpn_policy="HTTP3"), ["'HTTP3'", "HTTP2Preferred"]),
    "TLS health check": (dict(listeners=_listeners(protocol="TLS")),
                         ["protocol TLS is not allowed", "TCP, HTTP, HTTPS"]),
    "interval too short": (dict(listeners=_listeners(interval_s=4)), ["interval 4", "5-300"]),
    "timeout too long": (dict(listeners=_listeners(interval_s=300, timeout_s=121)),
                         ["timeout 121", "2-120"]),
    "timeout over interval": (dict(listeners=_listeners(interval_s=10, timeout_s=20)),
                              ["timeout 20 s exceeds the interval 10 s"]),
    "threshold too high": (dict(listeners=_listeners(healthy_threshold=11)),
                           ["healthy threshold 11", "2-10"]),
    "bad health check port": (dict(listeners=_listeners(port="http")),
                              ["port 'http'", "traffic-port or 1-65535"]),
    "path on TCP check": (dict(listeners=_listeners(path="/health")),
                          ["a path applies to HTTP and HTTPS checks only"]),
    "bad matcher": (dict(listeners=_listeners(protocol="HTTP", matcher="600")),
                    ["matcher '600'", "200-599"]),
    "bad prefix": (dict(name_prefix="NLB_TLS"), ["'NLB_TLS'", "lowercase"]),
    "bad region": (dict(region="mars-1"), ["'mars-1'", "eu-west-1"]),
    "bad client CIDR": (dict(network=Network(client_cidr="everyone")),
                        ["'everyone'", "IPv4 network"]),
    "ungeneratable key type": (dict(certificate=Certificate(key_type="RSA_4096")),
                               ["'RSA_4096'", "RSA_2048, RSA_3072"]),
    "ARN in another region": (dict(certificate=Certificate.existing(
        "arn:aws:acm:us-east-1:123456789012:certificate/abc")), ["region us-east-1",
                                                                 "eu-west-1"]),
    "not an ARN": (dict(certificate=Certificate.existing("my-cert")), ["'my-cert'",
                                                                      "ACM certificate ARN"]),
}


def _assert_refused_before_any_create(stack, clients, calls, tmp_path, expected):
    """build() raises StackConfigError with EXPECTED fragments; the call recorder saw no
    create or change call (it sees every call the clients make), and no state file exists."""
    calls.operations.clear()
    state_file = tmp_path / "s.json"
    with pytest.raises(StackConfigError) as raised:
        build(stack, clients, Ec2Compute(), state_file)
    message = str(raised.value)
    for fragment in expected:
        assert fragment in message, f"expected {fragment!r} in the message; got: {message}"
    assert calls.mutating == [], f"expected no create call; got {calls.mutating}"
    assert not state_file.exists(), "a refused stack must not start a state file"


@pytest.mark.parametrize("case", sorted(OFFLINE_CASES))
def test_bad_choice_fails_before_any_create(case, clients, calls, tmp_path):
    fields, expected = OFFLINE_CASES[case]
    _assert_refused_before_any_create(Stack(**fields), clients, calls, tmp_path, expected)


@pytest.mark.parametrize("key_type", ["RSA_4096", "EC_secp256k1"])
def test_key_type_the_nlb_refuses_fails_before_any_create(key_type, odd_keys, clients, calls,
                                                          tmp_path):
    stack = Stack(certificate=odd_keys[key_type])
    _assert_refused_before_any_create(stack, clients, calls, tmp_path,
                                      [f"key type {key_type}", "RSA_3072", "EC_secp521r1"])


def test_key_not_matching_certificate_fails_before_any_create(mismatched, clients, calls,
                                                              tmp_path):
    _assert_refused_before_any_create(Stack(certificate=mismatched), clients, calls, tmp_path,
                                      ["do not belong together", str(mismatched.cert_file)])


def test_bucket_in_another_region_fails_before_any_create(clients, calls, tmp_path):
    bucket = f"logs-elsewhere-{uuid.uuid4().hex[:8]}"
    Clients("us-west-2").s3.create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    stack = Stack(access_logs=AccessLogs(bucket=bucket))
    _assert_refused_before_any_create(stack, clients, calls, tmp_path,
                                      [f"{bucket} is in region us-west-2", "eu-west-1"])


def test_existing_bucket_without_delivery_policy_fails_before_any_create(clients, calls,
                                                                         tmp_path):
    bucket = f"logs-closed-{uuid.uuid4().hex[:8]}"
    clients.s3.create_bucket(Bucket=bucket,
                             CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    stack = Stack(access_logs=AccessLogs(bucket=bucket))
    _assert_refused_before_any_create(stack, clients, calls, tmp_path,
                                      [bucket, "delivery.logs.amazonaws.com",
                                       "nlb-tls/AWSLogs/123456789012/"])


def test_missing_bucket_fails_before_any_create(clients, calls, tmp_path):
    stack = Stack(access_logs=AccessLogs(bucket="no-such-bucket-here"))
    _assert_refused_before_any_create(stack, clients, calls, tmp_path,
                                      ["no-such-bucket-here", "NoSuchBucket"])


def test_unknown_certificate_arn_fails_before_any_create(clients, calls, tmp_path):
    arn = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
    _assert_refused_before_any_create(Stack(certificate=Certificate.existing(arn)), clients,
                                      calls, tmp_path, [arn, "ResourceNotFoundException"])


def _delete_vpc(clients, vpc, subnets):
    for subnet in subnets:
        clients.ec2.delete_subnet(SubnetId=subnet)
    clients.ec2.delete_vpc(VpcId=vpc)


def test_user_subnets_in_one_zone_fail_before_any_create(clients, calls, tmp_path, request):
    vpc = clients.ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    request.addfinalizer(lambda: _delete_vpc(clients, vpc, subnets))
    subnets = tuple(clients.ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24",
                                              AvailabilityZone="eu-west-1a")["Subnet"]["SubnetId"]
                    for i in range(2))
    stack = Stack(network=Network(subnet_ids=subnets))
    _assert_refused_before_any_create(stack, clients, calls, tmp_path,
                                      ["eu-west-1a", "two availability zones"])


def test_several_problems_are_reported_together():
    stack = Stack(ssl_policy="nope", alpn_policy="HTTP3", access_logs=AccessLogs(prefix="/x/"))
    with pytest.raises(StackConfigError) as raised:
        validate(stack)
    lines = str(raised.value).splitlines()[1:]
    assert len(lines) == 3, f"expected three problems, one per line; got {lines}"


def test_default_stack_and_every_policy_pass_validation():
    from infra.policies import POLICIES

    validate(Stack())
    for name in POLICIES:
        validate(Stack(ssl_policy=name))
    for alpn in ("HTTP1Only", "HTTP2Only", "HTTP2Optional", "HTTP2Preferred", "None", None):
        validate(Stack(alpn_policy=alpn))
    # A plain TCP listener needs no certificate.
    validate(Stack(certificate=None,
                   listeners=(Listener(80, TargetGroup("TCP", 8080), protocol="TCP"),)))


def test_existing_bucket_with_delivery_policy_is_accepted(clients, calls, tmp_path):
    bucket = f"logs-open-{uuid.uuid4().hex[:8]}"
    clients.s3.create_bucket(Bucket=bucket,
                             CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    policy = delivery_policy(bucket, "nlb-tls", "123456789012", "eu-west-1")
    clients.s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    check_against_account(Stack(access_logs=AccessLogs(bucket=bucket)), clients,
                          "123456789012")
    assert calls.mutating == ["s3.CreateBucket", "s3.PutBucketPolicy"], calls.mutating


def _import_into_acm(clients, certificate: Certificate) -> str:
    return clients.acm.import_certificate(
        Certificate=certificate.cert_file.read_bytes(),
        PrivateKey=certificate.key_file.read_bytes())["CertificateArn"]


def test_existing_certificate_with_a_key_type_the_nlb_refuses_fails_before_any_create(
        odd_keys, clients, calls, tmp_path, request):
    # ACM imports an RSA 4096 certificate; only attaching it to an NLB listener fails.
    arn = _import_into_acm(clients, odd_keys["RSA_4096"])
    request.addfinalizer(lambda: clients.acm.delete_certificate(CertificateArn=arn))
    _assert_refused_before_any_create(
        Stack(certificate=Certificate.existing(arn)), clients, calls, tmp_path,
        [f"certificate {arn}: key type RSA_4096", "RSA_2048, RSA_3072", "EC_secp521r1"])


def test_existing_certificate_not_issued_fails_before_any_create(clients, calls, tmp_path,
                                                                 request):
    # A requested certificate stays PENDING_VALIDATION until its DNS or email check passes.
    arn = clients.acm.request_certificate(DomainName="pending.nlb-tls-suite.test")[
        "CertificateArn"]
    request.addfinalizer(lambda: clients.acm.delete_certificate(CertificateArn=arn))
    status = clients.acm.describe_certificate(CertificateArn=arn)["Certificate"]["Status"]
    assert status == "PENDING_VALIDATION", f"expected a pending certificate, got {status}"
    _assert_refused_before_any_create(
        Stack(certificate=Certificate.existing(arn)), clients, calls, tmp_path,
        [f"certificate {arn}: status PENDING_VALIDATION", "accepted ISSUED"])


@pytest.mark.parametrize("missing", ["certificate file", "key file"])
def test_import_without_certificate_or_key_file_fails_before_any_create(
        missing, test_chain_files, clients, calls, tmp_path):
    files = test_chain_files
    certificate = (Certificate.from_files(None, files.key_file) if missing == "certificate file"
                   else Certificate.from_files(files.cert_file, None))
    _assert_refused_before_any_create(Stack(certificate=certificate), clients, calls, tmp_path,
                                      [f"importing needs a {missing}"])


@pytest.mark.parametrize("region", ["eu-west-1", "cn-northwest-1", "us-gov-west-1",
                                    "ap-southeast-3"])
def test_check_region_returns_a_region_name(region):
    assert check_region(region) == region


@pytest.mark.parametrize("value", ["", "mars", "a b", "EU-WEST-1", "eu-west-1\n", 5, None,
                                   "us-iso-east-1"])
def test_check_region_refuses_anything_else_naming_the_value_and_the_form(value):
    with pytest.raises(StackConfigError) as raised:
        check_region(value, "--region")

    message = str(raised.value)
    assert message.startswith(f"--region: region {value!r}"), message
    assert "eu-west-1" in message, f"expected the accepted form named; got {message}"


LONG_LABEL = "a" * 64
LONG_NAME = ".".join(["b" * 60] * 5)  # 304 characters
NAME_CASES = {
    "empty domain": (dict(certificate=Certificate(dns_names=("",))),
                     ["certificate: '' is not a DNS name: it is empty", "253"]),
    "two wildcards": (dict(certificate=Certificate(dns_names=("*.*.a",))),
                      ["'*.*.a' is not a DNS name", "only as the whole first label"]),
    "label over 63": (dict(certificate=Certificate(dns_names=(f"{LONG_LABEL}.test",))),
                      ["is 64 characters long", "at most 63 characters"]),
    "name over 253": (dict(certificate=Certificate(dns_names=(LONG_NAME,))),
                      ["is 304 characters long", "at most 253 characters"]),
    "SNI name with a space": (dict(extra_certificates=(Certificate(dns_names=("bad domain",)),)),
                              ["extra certificate 1: 'bad domain' is not a DNS name",
                               "letters, digits and hyphens"]),
    "prefix with a newline": (dict(access_logs=AccessLogs(prefix="a\nb")),
                              ["log prefix 'a\\nb'", "whitespace or control characters"]),
    "prefix with a space": (dict(access_logs=AccessLogs(prefix="team logs")),
                            ["log prefix 'team logs'", "without spaces"]),
    "prefix with an empty segment": (dict(access_logs=AccessLogs(prefix="a//b")),
                                     ["log prefix 'a//b'", "single slashes"]),
    "prefix too long for S3 keys": (dict(access_logs=AccessLogs(prefix="p" * 900)),
                                    ["log prefix of 900 bytes", "S3 keys are at most 1024 "
                                     "bytes", "accepted at most 824 bytes"]),
}


@pytest.mark.parametrize("case", sorted(NAME_CASES))
def test_bad_name_or_prefix_fails_before_any_create(case, clients, calls, tmp_path):
    fields, expected = NAME_CASES[case]
    _assert_refused_before_any_create(Stack(**fields), clients, calls, tmp_path, expected)


@pytest.mark.parametrize("name", ["a.test", "*.a.test", "xn--bcher-kva.test", "localhost",
                                  f"{'c' * 63}.test", ".".join(["d" * 62] * 4)])
def test_dns_names_acm_and_x509_take_pass_validation(name):
    validate(Stack(certificate=Certificate(dns_names=(name,))))


def test_the_longest_accepted_prefix_passes_validation():
    validate(Stack(access_logs=AccessLogs(prefix="p" * 824)))


@pytest.fixture
def import_files(test_chain_files, tmp_path):
    """Paths of the session chain's files, and a place to make bad ones."""
    files = test_chain_files

    def make(name: str, content: bytes):
        path = tmp_path / name
        path.write_bytes(content)
        return path

    return files, make


def _imported(files, **changes) -> Stack:
    given = {"cert_file": files.cert_file, "key_file": files.key_file,
             "chain_file": files.chain_file, "ca_bundle": files.ca_bundle, **changes}
    return Stack(certificate=Certificate.from_files(**given))


def _file_case(case, files, make, tmp_path):
    """(stack, expected fragments) for one bad file given to an imported certificate."""
    key = files.key_file.read_bytes()
    leaf = files.cert_file.read_bytes()
    if case == "chain of random bytes":
        path = make("chain.pem", bytes(range(256)) * 4)
        return _imported(files, chain_file=path), [f"chain file {path} holds", "1024 bytes "
                                                   "outside PEM blocks", "CERTIFICATE blocks"]
    if case == "chain holding a private key":
        path = make("chain.pem", files.chain_file.read_bytes() + key)
        return _imported(files, chain_file=path), [f"chain file {path} holds PRIVATE KEY "
                                                   "blocks", "accepted CERTIFICATE blocks"]
    if case == "chain holding the leaf":
        path = make("chain.pem", leaf + files.chain_file.read_bytes())
        return _imported(files, chain_file=path), [f"chain file {path} contains the leaf",
                                                   "the leaf excluded"]
    if case == "CA bundle is a directory":
        return _imported(files, ca_bundle=tmp_path), [f"CA bundle {tmp_path} is a directory"]
    if case == "CA bundle without a certificate":
        path = make("ca.pem", b"# no certificates here\n")
        return _imported(files, ca_bundle=path), [f"CA bundle {path} holds no PEM certificate"]
    if case == "certificate over ACM's 32 KiB":
        path = make("cert.pem", leaf + b"\n" * 40_000)
        return _imported(files, cert_file=path), [
            f"certificate file {path} is {len(leaf) + 40_000} bytes", "at most 32768"]
    if case == "key over 5 KB":
        path = make("key.pem", key + b"\n" * 6_000)
        return _imported(files, key_file=path), [
            f"key file {path} is {len(key) + 6_000} bytes", "at most 5120"]
    raise AssertionError(case)


FILE_CASES = ["chain of random bytes", "chain holding a private key", "chain holding the leaf",
              "CA bundle is a directory", "CA bundle without a certificate",
              "certificate over ACM's 32 KiB", "key over 5 KB"]


@pytest.mark.parametrize("case", FILE_CASES)
def test_bad_certificate_file_fails_before_any_create(case, import_files, clients, calls,
                                                      tmp_path):
    files, make = import_files
    stack, expected = _file_case(case, files, make, tmp_path)
    _assert_refused_before_any_create(stack, clients, calls, tmp_path, expected)


def test_the_session_chain_files_pass_validation(test_chain_files):
    validate(_imported(test_chain_files))


@pytest.mark.parametrize("field", ["cert_file", "key_file", "chain_file", "ca_bundle"])
def test_a_device_given_as_a_certificate_file_is_refused_without_reading_it(
        field, test_chain_files, clients, calls, tmp_path):
    stack = _imported(test_chain_files, **{field: "/dev/zero"})
    _assert_refused_before_any_create(stack, clients, calls, tmp_path,
                                      ["/dev/zero is not a regular file"])


def test_a_file_over_the_read_limit_is_refused_naming_the_limit(test_chain_files, tmp_path):
    big = tmp_path / "big.pem"
    with open(big, "wb") as handle:
        handle.truncate(certs.MAX_PEM_FILE_BYTES + 1)
    with pytest.raises(StackConfigError) as raised:
        validate(_imported(test_chain_files, chain_file=big))
    message = str(raised.value)
    assert f"{big} is larger than {certs.MAX_PEM_FILE_BYTES} bytes" in message, message


@pytest.mark.parametrize("given, expected", [
    (dict(chain_file="/some/chain.pem"), "a chain file (/some/chain.pem) applies to an "
                                         "imported certificate only"),
    (dict(ca_bundle="/some/ca.pem"), "a CA bundle (/some/ca.pem) applies to an imported "
                                     "certificate only"),
])
def test_files_a_generated_certificate_would_ignore_are_refused(given, expected):
    with pytest.raises(StackConfigError) as raised:
        validate(Stack(certificate=Certificate(**given)))
    assert expected in str(raised.value), str(raised.value)


def test_a_chain_file_with_an_acm_certificate_arn_is_refused():
    arn = "arn:aws:acm:eu-west-1:123456789012:certificate/abc"
    certificate = dataclasses.replace(Certificate.existing(arn), chain_file="/some/chain.pem")
    with pytest.raises(StackConfigError) as raised:
        validate(Stack(certificate=certificate))
    message = str(raised.value)
    assert "a chain file (/some/chain.pem) applies to an imported certificate only" in message
