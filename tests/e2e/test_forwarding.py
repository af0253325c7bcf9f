"""What each TLS listener forwards: the backend's page and JSON, HEAD, POST bodies, every target."""

import hashlib
import html
import os
import re

import pytest

from fixtures.checks import (
    BackendMismatch,
    check_backend_kind,
    check_backend_leg,
    check_body_returned,
    check_every_target_answered,
    check_head_matches_get,
    await_target_state,
    check_plaintext_leg,
    expected_backend_leg,
)
from fixtures.expectations import target_cipher_preference, target_key_algorithm
from fixtures.tls_probe import handshake

pytestmark = pytest.mark.e2e

# What each path posts: plain HTTP behind a TCP target group, HTTPS behind a TLS one.
_POSTED = {"TCP": b"hello world", "TLS": b"hello tls"}
_CONNECTIONS = 20
_MEBIBYTE = 1 << 20
_PRE = re.compile(r"<pre>(.*?)</pre>", re.DOTALL)


def _ok(response, listener, what: str):
    if response.status != 200:
        raise BackendMismatch(
            f"listener {listener.port}: expected 200 for {what} from the backend, got "
            f"{response.status} {response.reason} ({response.body[:120]!r})"
        )
    return response


def _targets(stack, group) -> list[tuple[tuple[str, int], str]]:
    """Each registered target as describe_target_health names it, and `address:port` as the
    backend reports where it answered."""
    described = stack.clients.elbv2.describe_target_health(TargetGroupArn=group.arn)
    targets = [(d["Target"]["Id"], d["Target"].get("Port", group.port))
               for d in described["TargetHealthDescriptions"]]
    address = {target_id: target_id for target_id, _ in targets}
    if group.target_type == "instance":
        # Instance targets are named by id; the backend reports its private address.
        ids = [target_id for target_id, _ in targets]
        reservations = stack.clients.ec2.describe_instances(InstanceIds=ids)["Reservations"]
        address = {i["InstanceId"]: i["PrivateIpAddress"]
                   for r in reservations for i in r["Instances"]}
    return [((target_id, port), f"{address[target_id]}:{port}") for target_id, port in targets]


def _registered_targets(stack, group) -> list[str]:
    """`address:port` of each registered target, from describe_target_health."""
    return [shown for _, shown in _targets(stack, group)]


def _answered_by(answer: dict) -> str:
    return f"{answer['local_address']}:{answer['local_port']}"


def _backend_key_algorithm(stack, group, answer: dict) -> tuple[str, str]:
    """The key type of the target's certificate, and where it was read; skips the test
    when it cannot be known."""
    host, port = answer["local_address"], answer["local_port"]
    if stack.target == "local":
        direct = handshake(host, port, None, ca_bundle=None)
        return direct.key_type, f"a handshake straight to the target {host}:{port}"
    # Targets in a VPC cannot be reached from here; the API says what runs on them.
    answered = [target for target, shown in _targets(stack, group)
                if shown == _answered_by(answer)]
    if not answered:
        pytest.skip(f"the target that answered ({_answered_by(answer)}) is not among the "
                    "registered targets, so its certificate's key type is unknown")
    key_algorithm, source = target_key_algorithm(stack.clients, group, *answered[0])
    if key_algorithm is None:
        pytest.skip(f"the backend leg's cipher depends on the target's key type: {source}")
    return key_algorithm, source


def test_get_returns_the_backends_html_page(tls_listener, our_backends, tls_request):
    response = _ok(tls_request(tls_listener, "GET", "/"), tls_listener, "GET /")
    content_type = response.header("Content-Type") or ""
    assert content_type.startswith("text/html"), (
        f"listener {tls_listener.port}: expected the backend's HTML page for a request "
        f"without Accept: application/json, got Content-Type {content_type!r}"
    )
    registered = _registered_targets(our_backends, tls_listener.expectation.target_group)
    text = response.body.decode("utf-8", "replace")
    assert any(target in text for target in registered), (
        f"listener {tls_listener.port}: expected the page to name the registered target "
        f"that answered (one of {registered}, describe_target_health), got {text[:300]!r}"
    )


def test_get_json_comes_from_the_target_groups_server(tls_listener, our_backends, tls_request):
    response = _ok(tls_request(tls_listener, "GET", "/", json=True), tls_listener, "GET /")
    answer = response.json()
    check_backend_kind(answer, tls_listener.expectation)
    registered = _registered_targets(our_backends, tls_listener.expectation.target_group)
    assert _answered_by(answer) in registered, (
        f"listener {tls_listener.port}: expected the answer from a registered target "
        f"{registered} (describe_target_health), got it from {_answered_by(answer)}"
    )


def test_backend_leg_is_what_the_target_group_protocol_implies(
    tls_listener, our_backends, tls_request
):
    answer = _ok(tls_request(tls_listener, "GET", "/", json=True), tls_listener, "GET /").json()
    expectation = tls_listener.expectation
    if expectation.target_group.protocol == "TCP":
        check_plaintext_leg(answer, expectation)
        return
    key_algorithm, key_source = _backend_key_algorithm(our_backends, expectation.target_group,
                                                       answer)
    preference, preference_source = target_cipher_preference()
    expected = expected_backend_leg(expectation, key_algorithm, preference,
                                    f"{key_source}; cipher order from {preference_source}")
    check_backend_leg(answer, expectation, expected)


def test_head_returns_gets_headers_and_no_body(tls_listener, our_backends, tls_request):
    get = _ok(tls_request(tls_listener, "GET", "/"), tls_listener, "GET /")
    head = _ok(tls_request(tls_listener, "HEAD", "/"), tls_listener, "HEAD /")
    check_head_matches_get(head, get, tls_listener.port)


def test_post_body_comes_back_on_the_page(tls_listener, our_backends, tls_request):
    body = _POSTED[tls_listener.expectation.target_group.protocol]
    response = _ok(tls_request(tls_listener, "POST", "/echo", body=body), tls_listener,
                   "POST /echo")
    shown = _PRE.search(response.body.decode("utf-8", "replace"))
    got = html.unescape(shown.group(1)).encode() if shown else b""
    check_body_returned(body, got, tls_listener.port, "body")


def test_one_mebibyte_random_body_arrives_with_the_same_sha256(
    tls_listener, our_backends, tls_request
):
    body = os.urandom(_MEBIBYTE)
    response = _ok(tls_request(tls_listener, "POST", "/upload", body=body, json=True),
                   tls_listener, "POST of 1 MiB")
    answer = response.json()
    sent = (len(body), hashlib.sha256(body).hexdigest())
    got = (answer.get("body_length"), answer.get("body_sha256"))
    assert got == sent, (
        f"listener {tls_listener.port}: expected the backend to receive {sent[0]} bytes with "
        f"SHA-256 {sent[1]} (the random body sent), it reported {got[0]} bytes, {got[1]}"
    )


def test_twenty_connections_reach_every_registered_target(
    tls_listener, our_backends, tls_request
):
    group = tls_listener.expectation.target_group
    targets = _targets(our_backends, group)
    registered = [shown for _, shown in targets]
    # Only healthy targets get connections; wait until every one is, as an NLB user would.
    for target, _ in targets:
        await_target_state(our_backends.clients.elbv2, group, target, "healthy",
                           group.healthy_threshold, slack=5.0)
    answered: dict[str, int] = {}
    for number in range(_CONNECTIONS):
        response = _ok(tls_request(tls_listener, "GET", f"/spread/{number}", json=True),
                       tls_listener, f"GET /spread/{number}")
        target = _answered_by(response.json())
        answered[target] = answered.get(target, 0) + 1
    check_every_target_answered(answered, registered, tls_listener.port, _CONNECTIONS)
