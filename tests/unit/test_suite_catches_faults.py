"""The e2e suite's own checks catch a sandbox broken on purpose, and name each fault."""

# One sandbox for the module (as the e2e session starts it); each test breaks one thing
# through the API, runs the check functions the e2e tests call, and repairs it again.

import dataclasses
import json
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fixtures.checks import (
    BackendMismatch,
    ChainMismatch,
    NegotiationMismatch,
    PolicyMismatch,
    await_target_state,
    check_body_returned,
    check_chain,
    check_listed_certificate,
    check_negotiated,
    check_policy_scan,
    expected_negotiation,
    trust_anchor,
)
from fixtures.e2e_stack import SandboxProcess, TeardownLeftovers, stack_from_state
from fixtures.expectations import (
    certificate_expectation,
    default_client_ciphers,
    listener_expectation,
    subject_of,
)
from fixtures.http_client import ConnectionRegistry, client_context, request
from fixtures.log_checks import (
    LogMismatch,
    await_entries,
    check_delivery_allowed,
    check_entry,
    describe_log_destination,
    diagnose_missing_entries,
)
from fixtures.log_poller import LogPoller
from fixtures.tls_probe import ProbeError, compare, handshake, scan
from fixtures.waiting import wait_for
from infra.certs import generate_chain, public_key_fingerprint
from infra.keystore import KeyStore

pytestmark = pytest.mark.unit

_APPLY_S = 10.0  # the data plane applies a configuration change within 2 s
_LOG_WAIT_S = 2.5  # objects are delivered every second (--log-interval 1)
_OTHER_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A sandbox subprocess started as the e2e plugin starts it; stopped cleanly after."""
    directory = tmp_path_factory.mktemp("broken-sandbox")
    process = SandboxProcess(directory / "sandbox.state.json", directory / "sandbox.log",
                             ["--log-interval", "1", "--listen-address", "127.0.0.1"])
    try:
        process.start()
        state = process.wait_ready(90.0, lambda message: None)
        yield stack_from_state(state, process.state_path, "sandbox", process.process.pid)
    finally:
        process.stop()


def _listener(stack, port=443):
    return listener_expectation(stack.clients, stack.load_balancer_arn, port, offline=True,
                                state=stack.state)


def _get(stack, listener, path="/", body=b"", registry=None, server_name=None):
    name = server_name or listener.default_certificate.server_name
    return request(
        stack.address(listener.port), "POST" if body else "GET", path,
        listener_port=listener.port, server_name=name,
        context=client_context(stack.ca_bundle), body=body, registry=registry,
    )


def _served(stack, port, server_name, fingerprint, ca_bundle):
    host, mapped = stack.address(port)

    def poll():
        try:
            got = handshake(host, mapped, server_name, ca_bundle=ca_bundle)
        except ProbeError:
            return None
        return got if fingerprint(got) else None

    return wait_for(f"listener {port} to apply the change", poll, timeout=_APPLY_S,
                    interval=0.2)


def test_log_check_names_a_bucket_policy_without_the_delivery_statements(sandbox):
    s3 = sandbox.clients.s3
    destination = describe_log_destination(
        sandbox.clients.elbv2, sandbox.load_balancer_arn, sandbox.account_id, sandbox.region,
        sandbox.load_balancer_name, sandbox.load_balancer_id)
    original = s3.get_bucket_policy(Bucket=destination.bucket)["Policy"]
    document = json.loads(original)
    document["Statement"] = [s for s in document["Statement"]
                             if s.get("Action") != "s3:PutObject"]
    listener = _listener(sandbox)
    listener_ids = {listener.port: listener.listener_id}
    s3.put_bucket_policy(Bucket=destination.bucket, Policy=json.dumps(document))
    try:
        with pytest.raises(LogMismatch, match="does not let delivery.logs.amazonaws.com put"):
            check_delivery_allowed(s3, destination)
        registry = ConnectionRegistry()
        _get(sandbox, listener, "/while-broken", registry=registry)
        poller = LogPoller(s3, destination.bucket, destination.prefix, sandbox.account_id,
                           sandbox.region)
        found, missing = await_entries(poller, registry.records(), listener_ids,
                                       require_all=True, timeout=_LOG_WAIT_S, interval=0.5,
                                       clock_slack=2.0)
        diagnosis = diagnose_missing_entries(s3, destination, poller)
    finally:
        s3.put_bucket_policy(Bucket=destination.bucket, Policy=original)
    assert (len(found), len(missing)) == (0, 1), (
        f"expected the connection made while the policy lacked the delivery statements to "
        f"have no entry, got {len(found)} found, {len(missing)} missing"
    )
    assert "log-delivery statements are missing" in diagnosis, (
        f"expected the diagnosis to name the bucket policy, got {diagnosis!r}"
    )

    # Repaired, the same check finds the next connection: the fault, not the check, failed.
    registry = ConnectionRegistry()
    _get(sandbox, listener, "/repaired", registry=registry)
    found, missing = await_entries(poller, registry.records(), listener_ids, require_all=True,
                                   timeout=_LOG_WAIT_S, interval=0.5, clock_slack=2.0)
    assert (len(found), len(missing)) == (1, 0), (
        f"expected the connection after the repair to be logged, got {len(found)} found, "
        f"{len(missing)} missing: {diagnose_missing_entries(s3, destination, poller)}"
    )
    logged = found[0]
    certificates = [listener.default_certificate.arn]
    check_entry(logged, listener.listener_id, certificates, destination)
    # An entry that miscounted the bytes sent is named field by field.
    miscounted = dataclasses.replace(
        logged, entry=dataclasses.replace(logged.entry, sent_bytes=logged.entry.sent_bytes + 1))
    with pytest.raises(LogMismatch, match="sent_bytes: expected"):
        check_entry(miscounted, listener.listener_id, certificates, destination)


def test_policy_checks_follow_a_switched_policy_and_fail_on_the_old_one(sandbox):
    elbv2 = sandbox.clients.elbv2
    before = _listener(sandbox)
    old = before.policy
    assert old.policy.name != _OTHER_POLICY, f"the sandbox already uses {_OTHER_POLICY}"
    host, port = sandbox.address(443)
    name = before.default_certificate.server_name
    key = before.default_certificate.key_algorithm
    elbv2.modify_listener(ListenerArn=before.arn, SslPolicy=_OTHER_POLICY)
    try:
        got = _served(sandbox, 443, name, lambda h: h.protocol == "TLSv1.3", sandbox.ca_bundle)
        after = _listener(sandbox)
        result = scan(host, port, name)

        # The expectation follows describe_listeners, so the switched stack passes ...
        check_policy_scan(compare(result, after.policy.policy, key), after.policy, 443)
        check_negotiated(got.protocol, got.cipher,
                         expected_negotiation(after.policy.policy, key, default_client_ciphers()),
                         after.policy.source)
        # ... while a data plane still serving the old policy is what these checks reject.
        with pytest.raises(PolicyMismatch, match="TLSv1.3") as caught:
            check_policy_scan(compare(result, old.policy, key), old, 443)
        with pytest.raises(NegotiationMismatch, match="expected TLSv1.2"):
            check_negotiated(got.protocol, got.cipher,
                             expected_negotiation(old.policy, key, default_client_ciphers()),
                             old.source)
    finally:
        elbv2.modify_listener(ListenerArn=before.arn, SslPolicy=old.policy.name)
    assert old.policy.name in str(caught.value), (
        f"expected the policy failure to name {old.policy.name}, got {caught.value}"
    )
    _served(sandbox, 443, name, lambda h: h.protocol == "TLSv1.2", sandbox.ca_bundle)


def test_chain_checks_name_a_certificate_imported_without_its_intermediate(sandbox, tmp_path):
    acm, elbv2 = sandbox.clients.acm, sandbox.clients.elbv2
    listener = _listener(sandbox)
    name = f"nochain.{listener.default_certificate.server_name}"
    chain = generate_chain([name], listener.default_certificate.key_type)
    files = chain.write(tmp_path, name="nochain")
    KeyStore(sandbox.state["keystore"]).put(chain.key_pem)
    arn = acm.import_certificate(Certificate=chain.leaf_pem, PrivateKey=chain.key_pem)[
        "CertificateArn"]
    elbv2.add_listener_certificates(ListenerArn=listener.arn,
                                    Certificates=[{"CertificateArn": arn}])
    try:
        # Listed by the stack as the suite lists its own SNI certificates: with its CA bundle.
        state = {"sni_certificates": [{"arn": arn, "ca_bundle": str(files.ca_bundle)}]}
        imported = certificate_expectation(acm, arn, state)
        bundle, trust = trust_anchor(imported, sandbox.ca_bundle)
        assert bundle == str(files.ca_bundle), (
            f"expected the listed certificate's own CA bundle {files.ca_bundle}, got {bundle}"
        )
        leaf = public_key_fingerprint(chain.leaf_pem)
        got = _served(sandbox, 443, name, lambda h: h.leaf_fingerprint == leaf, bundle)
        sent = [entry.subject for entry in got.chain]
        # The check the e2e test runs on each listed certificate.
        with pytest.raises(ChainMismatch, match="imported without its intermediate"):
            check_listed_certificate(got, imported, trust)
        # Against the chain that should have been imported, the missing link is named.
        intended = dataclasses.replace(imported, chain_subjects=(subject_of(chain.chain_pem),),
                                       chain_source=str(files.chain_file))
        with pytest.raises(ChainMismatch, match="intermediates missing"):
            check_chain(sent, intended)
    finally:
        elbv2.remove_listener_certificates(ListenerArn=listener.arn,
                                           Certificates=[{"CertificateArn": arn}])
        acm.delete_certificate(CertificateArn=arn)


class _WrongBody(BaseHTTPRequestHandler):
    """A backend that answers every request with a page that is not the request's body."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        page = b"<pre>not what you sent</pre>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(page)

    do_GET = do_POST = _answer

    def log_message(self, format, *args) -> None:  # noqa: A002 (BaseHTTPRequestHandler's)
        pass


def test_forwarding_check_names_a_backend_that_answers_the_wrong_body(sandbox):
    elbv2 = sandbox.clients.elbv2
    listener = _listener(sandbox)
    group = listener.target_group
    originals = [d["Target"] for d in elbv2.describe_target_health(
        TargetGroupArn=group.arn)["TargetHealthDescriptions"]]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WrongBody)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    wrong = {"Id": "127.0.0.1", "Port": server.server_address[1]}
    try:
        elbv2.register_targets(TargetGroupArn=group.arn, Targets=[wrong])
        elbv2.deregister_targets(TargetGroupArn=group.arn, Targets=originals)
        await_target_state(elbv2, group, (wrong["Id"], wrong["Port"]), "healthy",
                           group.healthy_threshold, slack=5.0)
        body = b"hello world"
        response = _get(sandbox, listener, "/echo", body=body)
        page = response.body.decode()
        got = page[page.find("<pre>") + 5:page.find("</pre>")].encode()
        with pytest.raises(BackendMismatch, match="expected the body posted .*'hello world'"):
            check_body_returned(body, got, listener.port, "body")
    finally:
        elbv2.register_targets(TargetGroupArn=group.arn, Targets=originals)
        elbv2.deregister_targets(TargetGroupArn=group.arn, Targets=[wrong])
        server.shutdown()
        server.server_close()
    for target in originals:
        await_target_state(elbv2, group, (target["Id"], target["Port"]), "healthy",
                           group.healthy_threshold, slack=5.0)


class _DirtySandbox(SandboxProcess):
    """Stands in for `python -m infra sandbox`: ready at once, and on SIGINT it exits 3
    without removing its state file, as a sandbox whose teardown failed would."""

    @property
    def command(self) -> list[str]:
        script = textwrap.dedent(f"""
            import json, signal, sys, time
            state = {{"run_id": "dirty", "region": "eu-west-1", "resources": [],
                      "status": "ready", "listeners": [{{"port": 443, "protocol": "TLS"}}]}}
            signal.signal(signal.SIGINT, lambda *_: sys.exit(3))
            open({str(self.state_path)!r}, "w").write(json.dumps(state))
            time.sleep(60)
        """)
        return [sys.executable, "-c", script]


def test_sandbox_teardown_that_leaves_things_fails_with_the_list(tmp_path):
    sandbox = _DirtySandbox(tmp_path / "dirty.state.json", tmp_path / "dirty.log", [])
    sandbox.start()
    sandbox.wait_ready(10.0, lambda message: None)
    with pytest.raises(TeardownLeftovers) as caught:
        sandbox.stop()
    message = str(caught.value)
    for leftover in ("exited with status 3", f"state file {sandbox.state_path} still exists"):
        assert leftover in message, f"expected the failure to list {leftover!r}, got {message}"
