"""Shared by the log-delivery tests: moto S3 in-process, a log bucket, distinct entries."""

import json
from datetime import datetime, timezone

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from infra.access_logs import AccessLogEntry, SocketAddress, load_balancer_resource, read_log_object
from infra.bucket_policy import delivery_policy

UTC = timezone.utc
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
BUCKET = "nlb-access-logs"
LB_ARN = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:loadbalancer/app/my-nlb/57434eb4d3e0a993"
OTHER_LB_ARN = LB_ARN.replace("my-nlb/57434eb4d3e0a993", "second/0123456789abcdef")
T0 = datetime(2024, 5, 1, 12, 1, 0, tzinfo=UTC)
LOGGER = "infra.sandbox.log_delivery"


@pytest.fixture(scope="module")
def _moto_s3():
    """moto in-process with fake credentials, and one S3 client (creating one takes ~0.2 s)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
        }.items():
            patch.setenv(name, value)
        patch.delenv("AWS_PROFILE", raising=False)
        with mock_aws() as mock:
            yield mock, boto3.client("s3", region_name=REGION)


@pytest.fixture
def s3(_moto_s3):
    """An S3 client on a freshly reset moto: nothing leaves the process."""
    mock, client = _moto_s3
    mock.reset()
    return client


def make_bucket(s3, bucket=BUCKET, prefixes=("logs",)):
    """A bucket whose policy grants delivery under each prefix (no policy for prefixes=())."""
    s3.create_bucket(Bucket=bucket)
    statements = []
    for prefix in prefixes:
        statements += delivery_policy(bucket, prefix, ACCOUNT, REGION)["Statement"]
    if statements:
        policy = {"Version": "2012-10-17", "Statement": statements}
        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def entry(n: int, at: datetime = T0, lb_arn: str = LB_ARN) -> AccessLogEntry:
    """A distinct entry: client port and sent_bytes carry N so entries can be counted."""
    return AccessLogEntry(
        time=at,
        elb=load_balancer_resource(lb_arn).elb,
        listener="0c63aec2d168e1a0",
        client=SocketAddress("127.0.0.1", 1024 + n % 60000),
        destination=SocketAddress("127.0.0.1", 443),
        connection_time=5,
        tls_handshake_time=2,
        received_bytes=n,
        sent_bytes=n,
        tls_cipher="ECDHE-RSA-AES128-GCM-SHA256",
        tls_protocol_version="tlsv12",
    )


def objects(s3, bucket=BUCKET) -> dict[str, list[AccessLogEntry]]:
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {
        item["Key"]: read_log_object(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        for item in listed
    }


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FlakyS3:
    """Delegates to a real client; the first FAILURES put_object calls raise ERROR."""

    def __init__(self, client, error: Exception, failures: int = 1) -> None:
        self._client, self._error, self.failures = client, error, failures

    def put_object(self, **params):
        if self.failures:
            self.failures -= 1
            raise self._error
        return self._client.put_object(**params)

    def __getattr__(self, name):
        return getattr(self._client, name)


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "PutObject")


def client_error(code: str) -> ClientError:
    """The ClientError S3 would raise with error code CODE."""
    return ClientError({"Error": {"Code": code, "Message": code}}, "PutObject")
