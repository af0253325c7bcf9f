"""The sandbox's moto server: which requests are changes, and the watcher polling on notice."""

from __future__ import annotations

import io
import threading
import time

import boto3
import pytest

from infra.sandbox.config import ConfigWatcher
from infra.sandbox.control_plane import ControlPlaneServer, is_change, operation_of

pytestmark = pytest.mark.unit

_FORM = "application/x-www-form-urlencoded; charset=utf-8"


def _form(body: bytes) -> dict:
    return {"CONTENT_TYPE": _FORM, "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body)}


@pytest.mark.parametrize(("environ", "operation", "change"), [
    (_form(b"Action=ModifyListener&Version=2015-12-01&ListenerArn=x"), "ModifyListener", True),
    (_form(b"Action=DescribeListeners&Version=2015-12-01"), "DescribeListeners", False),
    (_form(b"Action=RegisterTargets&TargetGroupArn=x"), "RegisterTargets", True),
    ({"HTTP_X_AMZ_TARGET": "CertificateManager.DeleteCertificate"}, "DeleteCertificate", True),
    ({"HTTP_X_AMZ_TARGET": "CertificateManager.GetCertificate"}, "GetCertificate", False),
    ({"QUERY_STRING": "Action=ListTagsForResource"}, "ListTagsForResource", False),
    ({"REQUEST_METHOD": "PUT", "CONTENT_TYPE": "application/octet-stream",
      "CONTENT_LENGTH": "3", "wsgi.input": io.BytesIO(b"log")}, None, False),  # S3 put
])
def test_operation_and_change_are_read_from_the_request(environ, operation, change):
    found, body = operation_of(environ)
    assert found == operation, f"expected {operation!r}, got {found!r}"
    assert is_change(found) is change, f"{found}: expected change={change}"
    if body is not None:
        assert body == environ["wsgi.input"].getvalue(), "the body read must be the whole form"


@pytest.fixture
def server(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_CONFIG_FILE": "/dev/null"}.items():
        monkeypatch.setenv(name, value)
    running = ControlPlaneServer().start()
    yield running
    running.stop()


def test_server_notifies_after_a_change_and_the_request_still_works(server):
    notices = []
    server.notify_to(lambda: notices.append(time.monotonic()))
    elbv2 = boto3.client("elbv2", region_name="eu-west-1", endpoint_url=server.url)
    elbv2.describe_load_balancers()
    assert notices == [], "a read must not notify"
    created = elbv2.create_target_group(Name="tg-notice", Protocol="TCP", Port=8080,
                                        VpcId=_default_vpc(server.url), TargetType="ip")
    assert len(notices) == 1, f"expected one notice for CreateTargetGroup, got {len(notices)}"
    # The form body was read to find the operation; moto must still have seen all of it.
    (group,) = elbv2.describe_target_groups(Names=["tg-notice"])["TargetGroups"]
    assert group["TargetGroupArn"] == created["TargetGroups"][0]["TargetGroupArn"]
    assert (group["Protocol"], group["Port"]) == ("TCP", 8080), group
    assert server.url.startswith("http://127.0.0.1:"), server.url


def _default_vpc(url: str) -> str:
    ec2 = boto3.client("ec2", region_name="eu-west-1", endpoint_url=url)
    return ec2.describe_vpcs()["Vpcs"][0]["VpcId"]


class _CountingReader:
    """A ConfigReader stand-in: returns `version`, and sets `polled[n]` at its n-th read."""

    def __init__(self) -> None:
        self.reads = 0
        self.version = 0
        self.polled = [threading.Event() for _ in range(4)]

    def read(self):
        if self.reads < len(self.polled):
            self.polled[self.reads].set()
        self.reads += 1
        return self.version


def test_notify_polls_at_once_however_long_the_interval():
    reader = _CountingReader()
    seen = []
    watcher = ConfigWatcher(reader, seen.append, interval=600.0)
    watcher.start()
    try:
        assert reader.polled[0].wait(5), "the first poll did not run"
        reader.version = 1
        watcher.notify()
        # Without the notice the next poll would come after 600 s.
        assert reader.polled[1].wait(10), "notify() did not make the watcher poll"
    finally:
        watcher.stop()
    assert seen == [0, 1], f"expected the first read and the change after notify(), got {seen}"


def test_without_notice_the_regular_poll_still_comes():
    reader = _CountingReader()
    watcher = ConfigWatcher(reader, lambda config: None, interval=0.2)
    watcher.start()
    try:
        assert reader.polled[2].wait(10), f"expected a poll every 0.2 s; {reader.reads} so far"
    finally:
        watcher.stop()
