"""The backend leg's key type is read from the API on the aws target, or left unknown."""

import pytest

from fixtures.expectations import TargetGroupExpectation, target_key_algorithm
from fixtures.tls_probe import handshake
from infra.stack import Stack
from infra.user_data import render_user_data
from servers import https_server

pytestmark = pytest.mark.unit


def _group(target_type: str = "instance", port: int = 8443) -> TargetGroupExpectation:
    return TargetGroupExpectation(
        f"arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/tls{port}/1",
        "TLS", port, target_type, 10, 5, 3, 3)


@pytest.fixture(scope="module")
def image(module_clients) -> str:
    """An AMI id of moto's catalogue (listing it takes about a second, so once)."""
    return module_clients.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]


def _instance(clients, image: str, user_data: bytes) -> str:
    return clients.ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                                     UserData=user_data)["Instances"][0]["InstanceId"]


def test_the_https_servers_self_signed_key_is_the_one_it_exports():
    # The expectation reads the constant instead of starting a server; this handshake with
    # the server on loopback keeps the constant honest.
    server = https_server.make_server("127.0.0.1", 0)
    server.start()
    try:
        got = handshake("127.0.0.1", server.port, None, ca_bundle=None)
    finally:
        server.stop()
    expected = (https_server.SELF_SIGNED_KEY_TYPE, https_server.SELF_SIGNED_KEY_BITS)
    assert (got.key_type, got.key_bits) == expected, (
        f"expected the self-signed certificate's key to be {expected}, got "
        f"{(got.key_type, got.key_bits)}"
    )


def test_an_instance_running_the_suites_user_data_has_the_https_servers_key_type(
    clients, image
):
    stack = Stack()
    tls = next(g for g in stack.target_groups if g.protocol == "TLS")
    instance = _instance(clients, image, render_user_data(stack.target_groups, stack.run_id))
    got, source = target_key_algorithm(clients, _group(port=tls.port), instance, tls.port)
    expected = https_server.SELF_SIGNED_KEY_TYPE
    assert got == expected, (
        f"expected the key type of servers.https_server's own certificate ({expected}), "
        f"got {got} ({source})"
    )
    assert instance in source and "DescribeInstanceAttribute" in source, (
        f"expected the source to name the instance {instance} and the API call, got {source!r}"
    )


@pytest.mark.parametrize("unit_line, reason", [
    ("ExecStart=/usr/bin/python3 -m servers.https_server -l 0.0.0.0 -p 8443 --cert c --key k",
     "with --cert"),
    ("ExecStart=/usr/bin/python3 -m servers.https_server -l 0.0.0.0 -p 9443",
     "no servers.https_server on port 8443"),
    ("#!/bin/bash\necho not ours", "no servers.https_server on port 8443"),
])
def test_a_target_whose_certificate_the_api_cannot_show_has_an_unknown_key_type(
    clients, image, unit_line, reason
):
    instance = _instance(clients, image, unit_line.encode())
    got, source = target_key_algorithm(clients, _group(), instance, 8443)
    assert (got, reason in source) == (None, True), (
        f"expected an unknown key type with a reason saying {reason!r}, got {got} ({source})"
    )


def test_an_ip_target_has_an_unknown_key_type(clients):
    got, source = target_key_algorithm(clients, _group("ip"), "10.0.0.5", 8443)
    assert got is None and "ip target" in source, (
        f"expected an unknown key type for an ip target, got {got} ({source})"
    )
