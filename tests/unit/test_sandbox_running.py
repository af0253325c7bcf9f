"""The sandbox's data plane, running in this process: policies, forwarding, changes, logs.

One sandbox for the module (moto server, four backend processes, the data plane), started
with a 0.5 s log interval, a 1 s handshake timeout and fast health checks so the slow
cases stay quick. Tests that change the configuration put it back before they end; the
last test stops the traffic and checks that no entry was lost.
"""

import asyncio
import datetime
import hashlib
import json
import logging
import queue
import socket
import ssl
import struct
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from fixtures.tls_probe import HandshakeRefused, handshake
from fixtures.tls_scan import compare, scan
from infra import certs
from infra.access_logs import parse_object_key, read_log_object
from infra.bucket_policy import delivery_policy
from infra.policies import get_policy
from infra.sandbox.run import Sandbox, SandboxOptions
from infra.sandbox.tls import IDLE_TIMEOUT_SECONDS
from infra.stack import Stack

pytestmark = pytest.mark.unit

DEFAULT_POLICY = "ELBSecurityPolicy-2016-08"
CHANGE_DEADLINE_S = 2.5  # the data plane applies a change within 2 s of the API call


class _ErrorRecords(logging.Handler):
    """Collects error-level records, whichever thread logs them."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def errors():
    """Error records of the data plane and of asyncio (an exception in a callback or task)."""
    collector = _ErrorRecords()
    watched = [logging.getLogger(name) for name in ("infra.sandbox", "asyncio")]
    for logger in watched:
        logger.addHandler(collector)
    yield collector.records
    for logger in watched:
        logger.removeHandler(collector)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, errors):
    """A running sandbox: the default stack, logs every 0.5 s, handshakes time out at 1 s,
    health checks 50 times faster than the groups say. The configuration's regular poll is
    a minute apart, so every change a test makes is applied by the moto server's notice
    that a request changed something."""
    state_file = tmp_path_factory.mktemp("sandbox") / "state.json"
    options = SandboxOptions(state_file=state_file, log_interval=0.5, handshake_timeout=1.0,
                             health_time_scale=0.02, watch_interval=60.0)
    running = Sandbox(Stack(), options)
    running.start()
    yield running
    running.stop()
    assert not state_file.exists(), "expected the state file removed at stop"


@pytest.fixture(scope="module")
def api(sandbox):
    return sandbox.clients("elbv2", "acm", "s3")


def _listener(sandbox, port: int) -> dict:
    return next(item for item in sandbox.state["listeners"] if item["port"] == port)


def _address(sandbox, port: int) -> tuple[str, int]:
    address = _listener(sandbox, port)["address"]
    return address["host"], address["port"]


def _domain(sandbox) -> str:
    return sandbox.state["certificate"]["domain"]


def _client_context(sandbox, **options) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=sandbox.state["certificate"]["ca_bundle"])
    for name, value in options.items():
        setattr(context, name, value)
    return context


def _request(sandbox, port, body=b"", *, path="/", server_name=None, context=None,
             timeout=5.0, accept="application/json"):
    """One HTTP/1.1 request over TLS; returns (status, headers, body, client port, sent, got)
    where sent and got are the plaintext byte counts of this side."""
    host, address_port = _address(sandbox, port)
    name = server_name or _domain(sandbox)
    method = "POST" if body else "GET"
    head = (f"{method} {path} HTTP/1.1\r\nHost: {name}\r\nAccept: {accept}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((host, address_port), timeout=timeout) as raw:
        client_port = raw.getsockname()[1]
        with (context or _client_context(sandbox)).wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(head + body)
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    head_part, _, payload = answer.partition(b"\r\n\r\n")
    status = int(head_part.split(b" ", 2)[1])
    return status, head_part.decode(), payload, client_port, len(head) + len(body), len(answer)


def _json(sandbox, port, body=b"", **options) -> dict:
    status, _, payload, *_ = _request(sandbox, port, body, **options)
    assert status == 200, f"expected 200 through listener {port}, got {status}"
    return json.loads(payload)


def _eventually(what, check, deadline_s=CHANGE_DEADLINE_S, interval=0.05):
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            result = check()
        except (OSError, ssl.SSLError, HandshakeRefused):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen within {deadline_s} s")
        time.sleep(interval)


class LogStore:
    """Every access-log object of a bucket (the sandbox's by default), each read once."""

    def __init__(self, sandbox, api, bucket=None):
        self.s3, self.bucket = api.s3, bucket or sandbox.state["access_logs"]["bucket"]
        self.entries, self.keys = [], []

    def refresh(self):
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        for item in (o for page in pages for o in page.get("Contents", [])):
            if item["Key"] not in self.keys:
                self.keys.append(item["Key"])
                body = self.s3.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                self.entries += read_log_object(body)


class LogReader:
    """The entries of connections made since the reader was created (one per test), found
    by client port: ephemeral ports come round again over a module's many connections."""

    def __init__(self, store: LogStore):
        self.store = store
        self.since = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        self.keys = store.keys

    def refresh(self):
        self.store.refresh()

    @property
    def entries(self):
        return [e for e in self.store.entries if e.tls_connection_creation_time >= self.since]

    def by_port(self, port: int):
        return [entry for entry in self.entries if entry.client.port == port]

    def entry_for(self, port: int, deadline_s: float = 5.0):
        def found():
            self.refresh()
            return self.by_port(port)

        matches = _eventually(f"access-log entry for client port {port}", found, deadline_s, 0.2)
        assert len(matches) == 1, f"expected one entry for client port {port}, got {matches}"
        return matches[0]


@pytest.fixture(scope="module")
def log_store(sandbox, api):
    return LogStore(sandbox, api)


@pytest.fixture
def logs(log_store):
    """The access-log entries of this test's connections."""
    return LogReader(log_store)


# ---- handshakes per policy -------------------------------------------------------------------

def _set_policy(sandbox, api, port, policy):
    """modify_listener, then wait until the data plane serves the change."""
    arn = _listener(sandbox, port)["arn"]
    api.elbv2.modify_listener(ListenerArn=arn, SslPolicy=policy)
    _eventually(f"listener {port} on {policy}", lambda: any(
        item.arn == arn and item.ssl_policy == policy
        for item in sandbox.watcher.current.listeners))


def _policy_difference(sandbox, port, policy_name):
    host, address_port = _address(sandbox, port)
    return compare(scan(host, address_port, _domain(sandbox)), get_policy(policy_name), "RSA")


def _assert_accepts_exactly(sandbox, port, policy_name):
    difference = _policy_difference(sandbox, port, policy_name)
    assert difference.ok, f"listener {port} against {policy_name}:\n{difference.describe()}"


def test_default_listener_accepts_exactly_2016_08(sandbox):
    _assert_accepts_exactly(sandbox, 443, DEFAULT_POLICY)
    negotiated = handshake(*_address(sandbox, 443), _domain(sandbox),
                           ca_bundle=sandbox.state["certificate"]["ca_bundle"])
    assert (negotiated.protocol, negotiated.cipher, negotiated.verified) == (
        "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", True), negotiated
    subjects = [entry.subject for entry in negotiated.chain]
    assert len(subjects) == 2 and _domain(sandbox) in subjects[0], (
        f"expected leaf and the imported intermediate only, got {subjects}"
    )


@pytest.mark.parametrize("policy", ["ELBSecurityPolicy-TLS13-1-2-2021-06",
                                    "ELBSecurityPolicy-FS-1-2-Res-2020-10"])
def test_modify_listener_policy_takes_effect_for_new_connections(sandbox, api, policy):
    arn = _listener(sandbox, 9443)["arn"]
    api.elbv2.modify_listener(ListenerArn=arn, SslPolicy=policy)
    try:
        # Within 2 s of the call the listener accepts exactly the new policy.
        _eventually(f"listener 9443 accepting exactly {policy}",
                    lambda: _policy_difference(sandbox, 9443, policy).ok)
        if "TLS13" in policy:
            backend = _json(sandbox, 9443)["tls"]
            # TLS 1.3 listener policies use ELBSecurityPolicy-TLS13-1-0-2021-06 to targets.
            assert backend["version"] == "TLSv1.3", f"backend leg: expected TLSv1.3, got {backend}"
    finally:
        _set_policy(sandbox, api, 9443, DEFAULT_POLICY)


# ---- forwarding ----------------------------------------------------------------------------

def test_tcp_path_reaches_the_http_server_and_echoes_a_post(sandbox):
    page = _json(sandbox, 443)
    assert page["server"] == "http" and page["tls"] is None, page
    echoed = _json(sandbox, 443, b"hello world")
    assert echoed["body_sha256"] == hashlib.sha256(b"hello world").hexdigest(), echoed
    status, _, html, *_ = _request(sandbox, 443, b"hello world", accept="text/html")
    assert status == 200 and b"<pre>hello world</pre>" in html, "expected the body in the page"


def test_tls_path_reaches_the_https_server_with_the_backend_policy(sandbox):
    page = _json(sandbox, 9443, b"hello tls")
    assert page["server"] == "https", page
    assert page["body_sha256"] == hashlib.sha256(b"hello tls").hexdigest(), page
    backend = get_policy(DEFAULT_POLICY)  # the backend policy behind a 2016-08 listener
    assert page["tls"]["version"] in backend.protocols and page["tls"]["cipher"] in (
        backend.ciphers), f"backend leg {page['tls']} is not within {backend.name}"
    assert page["tls"]["server_name"] == _domain(sandbox), "expected the client's SNI passed on"


def test_large_body_comes_back_unchanged_through_both_paths(sandbox):
    body = bytes(range(256)) * 4096  # 1 MiB
    for port in (443, 9443):
        page = _json(sandbox, port, body)
        assert page["body_sha256"] == hashlib.sha256(body).hexdigest(), f"listener {port}"


def test_every_registered_target_answers(sandbox):
    for port, group in ((443, "tcp8080"), (9443, "tls8443")):
        expected = {b.port for b in sandbox.compute.backends.values() if b.group_key == group}
        seen = {_json(sandbox, port)["listen_port"] for _ in range(20)}
        assert seen == expected, f"listener {port}: expected targets {expected}, got {seen}"


# ---- reconfiguration -------------------------------------------------------------------------

def _import_certificate(api, names, key_type="RSA_2048"):
    chain = certs.generate_chain(names, key_type)
    arn = api.acm.import_certificate(Certificate=chain.leaf_pem, PrivateKey=chain.key_pem,
                                     CertificateChain=chain.chain_pem)["CertificateArn"]
    return arn, chain


def _leaf_fingerprint(sandbox, port, server_name):
    return handshake(*_address(sandbox, port), server_name).leaf_fingerprint


def test_added_listener_certificate_is_served_by_sni(sandbox, api):
    arn, chain = _import_certificate(api, ["sni.sandbox.test"], "EC_prime256v1")
    listener = _listener(sandbox, 443)["arn"]
    expected = certs.public_key_fingerprint(chain.leaf_pem)
    with open(sandbox.state["certificate"]["cert_file"], "rb") as leaf:
        default = certs.public_key_fingerprint(leaf.read())
    api.elbv2.add_listener_certificates(ListenerArn=listener,
                                        Certificates=[{"CertificateArn": arn}])
    try:
        _eventually("the SNI certificate served for sni.sandbox.test", lambda: (
            _leaf_fingerprint(sandbox, 443, "sni.sandbox.test") == expected))
        assert _leaf_fingerprint(sandbox, 443, None) == default, "no SNI: expected the default"
        assert _leaf_fingerprint(sandbox, 443, "other.test") == default, "no match: the default"
    finally:
        api.elbv2.remove_listener_certificates(ListenerArn=listener,
                                               Certificates=[{"CertificateArn": arn}])
    _eventually("the default certificate back for sni.sandbox.test", lambda: (
        _leaf_fingerprint(sandbox, 443, "sni.sandbox.test") == default))


def _import_rsa_1024(api, name):
    """A self-signed RSA 1024 certificate for `name` imported into ACM: the NLB serves RSA
    1024, which certs.generate_chain does not make. Returns (ARN, leaf PEM)."""
    key = rsa.generate_private_key(65537, 1024)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    ).public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    arn = api.acm.import_certificate(Certificate=leaf, PrivateKey=key_pem)["CertificateArn"]
    return arn, leaf


def _import_with_a_foreign_key(api, name):
    """A certificate imported with a private key that is not its own: moto takes it, OpenSSL
    refuses to load the pair. Returns its ARN."""
    chain, other = certs.generate_chain([name]), certs.generate_chain([name])
    return api.acm.import_certificate(Certificate=chain.leaf_pem, PrivateKey=other.key_pem,
                                      CertificateChain=chain.chain_pem)["CertificateArn"]


def test_rsa_1024_and_refused_certificates_keep_the_listener_on_its_address(sandbox, api,
                                                                            caplog):
    listener = _listener(sandbox, 443)["arn"]
    address = sandbox.plane.addresses()[listener]

    def same_address(what):
        now = sandbox.plane.addresses().get(listener)
        assert now == address, f"{what}: expected listener 443 still on {address}, got {now}"
        return True

    with open(sandbox.state["certificate"]["cert_file"], "rb") as leaf:
        default = certs.public_key_fingerprint(leaf.read())
    small_arn, small_leaf = _import_rsa_1024(api, "small.sandbox.test")
    refused_arn = _import_with_a_foreign_key(api, "refused.sandbox.test")
    # A TLS 1.2+ policy runs at OpenSSL's default security level, which refuses RSA 1024.
    _set_policy(sandbox, api, 443, "ELBSecurityPolicy-TLS13-1-2-2021-06")
    try:
        api.elbv2.add_listener_certificates(ListenerArn=listener,
                                            Certificates=[{"CertificateArn": small_arn}])
        expected = certs.public_key_fingerprint(small_leaf)
        _eventually("the RSA 1024 certificate served for small.sandbox.test", lambda: (
            same_address("adding RSA 1024")
            and _leaf_fingerprint(sandbox, 443, "small.sandbox.test") == expected))

        api.elbv2.add_listener_certificates(ListenerArn=listener,
                                            Certificates=[{"CertificateArn": refused_arn}])
        _eventually("the refused certificate reported", lambda: same_address(
            "adding a refused certificate") and any(
            refused_arn in record.getMessage() and "cannot serve" in record.getMessage()
            for record in caplog.records))
        assert _leaf_fingerprint(sandbox, 443, "refused.sandbox.test") == default, (
            "expected the default certificate in place of the refused one")
        assert _leaf_fingerprint(sandbox, 443, "small.sandbox.test") == expected, (
            "expected the RSA 1024 certificate still served beside the refused one")
        _still_serving(sandbox)
    finally:
        api.elbv2.remove_listener_certificates(ListenerArn=listener, Certificates=[
            {"CertificateArn": small_arn}, {"CertificateArn": refused_arn}])
        _set_policy(sandbox, api, 443, DEFAULT_POLICY)
    _eventually("the default certificate back for small.sandbox.test", lambda: (
        _leaf_fingerprint(sandbox, 443, "small.sandbox.test") == default))
    same_address("after removing both")


def _health(api, group_arn) -> dict:
    answer = api.elbv2.describe_target_health(TargetGroupArn=group_arn)
    return {d["Target"]["Port"]: d["TargetHealth"]["State"]
            for d in answer["TargetHealthDescriptions"]}


def _group(sandbox, key):
    return next(group for group in sandbox.state["target_groups"] if group["key"] == key)


def test_deregistered_target_drains_and_gets_no_new_connections(sandbox, api):
    group = _group(sandbox, "tcp8080")
    removed, kept = group["targets"]
    api.elbv2.deregister_targets(TargetGroupArn=group["arn"], Targets=[removed])
    try:
        assert _health(api, group["arn"])[removed["Port"]] == "draining"
        _eventually("the deregistered target out of the data plane's target group", lambda: all(
            target.port != removed["Port"]
            for target in sandbox.watcher.current.target_group(group["arn"]).targets))
        seen = {_json(sandbox, 443)["listen_port"] for _ in range(12)}
        assert seen == {kept["Port"]}, f"expected only target {kept['Port']}, got {seen}"
    finally:
        api.elbv2.register_targets(TargetGroupArn=group["arn"], Targets=[removed])
    _eventually("the target healthy again", lambda: _health(api, group["arn"]).get(
        removed["Port"]) == "healthy", deadline_s=5)


def test_stopped_backend_is_reported_unhealthy_and_avoided(sandbox, api):
    group = _group(sandbox, "tls8443")
    stopped = sandbox.compute.stop_backend("tls8443", 1)
    try:
        # Thresholds 2 at a 10 s interval, run 50 times faster here: well under a second.
        _eventually("describe_target_health saying unhealthy", lambda: _health(
            api, group["arn"])[stopped.port] == "unhealthy", deadline_s=5)
        answer = api.elbv2.describe_target_health(TargetGroupArn=group["arn"])
        reasons = {d["Target"]["Port"]: d["TargetHealth"].get("Reason")
                   for d in answer["TargetHealthDescriptions"]}
        assert reasons[stopped.port] == "Target.FailedHealthChecks", reasons
        seen = {_json(sandbox, 9443)["listen_port"] for _ in range(10)}
        assert stopped.port not in seen, f"no connection should reach {stopped.port}: {seen}"
    finally:
        sandbox.compute.start_backend("tls8443", 1)
    _eventually("the restarted backend healthy", lambda: _health(
        api, group["arn"])[stopped.port] == "healthy", deadline_s=5)


# ---- access logs -----------------------------------------------------------------------------

def test_log_entry_matches_the_connection_it_describes(sandbox, logs):
    status, _, _, client_port, sent, received = _request(sandbox, 443, b"log me")
    entry = logs.entry_for(client_port)
    listener = _listener(sandbox, 443)
    balancer = sandbox.state["load_balancer"]
    expected = {
        "elb": f"net/{balancer['name']}/{balancer['arn'].rsplit('/', 1)[-1]}",
        "listener": listener["arn"].rsplit("/", 1)[-1],
        "destination": _address(sandbox, 443),
        "received_bytes": sent, "sent_bytes": received,
        "chosen_cert_arn": sandbox.state["certificate"]["arn"],
        "tls_cipher": "ECDHE-RSA-AES128-GCM-SHA256", "tls_protocol_version": "tlsv12",
        "domain_name": _domain(sandbox), "incoming_tls_alert": None,
    }
    got = {name: getattr(entry, name) for name in expected}
    got["destination"] = (entry.destination.ip, entry.destination.port)
    assert got == expected, f"entry {entry.format()}"
    assert entry.tls_handshake_time is not None and entry.connection_time >= (
        entry.tls_handshake_time), entry.format()
    assert entry.tls_connection_creation_time <= entry.time


def test_log_objects_have_the_aws_key_layout(sandbox, logs):
    logs.refresh()
    assert logs.keys, "expected log objects by now"
    balancer = sandbox.state["load_balancer"]
    for key in logs.keys:
        parsed = parse_object_key(key)
        assert (parsed.prefix, parsed.account_id, parsed.region, parsed.lb_name) == (
            sandbox.state["access_logs"]["prefix"], sandbox.state["account_id"],
            sandbox.state["region"], balancer["name"]), key
        assert parsed.lb_id == balancer["arn"].rsplit("/", 1)[-1], key


def test_alpn_offer_is_logged_and_policy_none_negotiates_nothing(sandbox, logs):
    context = _client_context(sandbox)
    context.set_alpn_protocols(["h2", "http/1.1"])
    *_, client_port, _, _ = _request(sandbox, 443, context=context)
    entry = logs.entry_for(client_port)
    assert entry.alpn_client_preference_list == ("h2", "http/1.1"), entry.format()
    assert entry.alpn_fe_protocol is None, "AlpnPolicy None: expected no protocol agreed"


def test_access_logs_switched_off_write_nothing_and_on_again_resume(sandbox, api, logs):
    balancer = sandbox.state["load_balancer"]["arn"]

    def set_enabled(value):
        api.elbv2.modify_load_balancer_attributes(LoadBalancerArn=balancer, Attributes=[
            {"Key": "access_logs.s3.enabled", "Value": value}])
        _eventually(f"access logs {value}", lambda: sandbox.watcher.current.access_logs.enabled
                    is (value == "true"))

    set_enabled("false")
    try:
        *_, silent_port, _, _ = _request(sandbox, 443)
    finally:
        set_enabled("true")
    *_, logged_port, _, _ = _request(sandbox, 443)
    logs.entry_for(logged_port)
    logs.refresh()
    assert logs.by_port(silent_port) == [], "a connection made with logs off was logged"


def _set_log_attributes(sandbox, api, **values):
    balancer = sandbox.state["load_balancer"]["arn"]
    api.elbv2.modify_load_balancer_attributes(LoadBalancerArn=balancer, Attributes=[
        {"Key": f"access_logs.s3.{key}", "Value": value} for key, value in values.items()])
    _eventually(f"access logs set to {values}", lambda: all(
        getattr(sandbox.watcher.current.access_logs, key) == (
            value == "true" if key == "enabled" else value) for key, value in values.items()))


def test_access_logs_pointed_elsewhere_go_to_the_new_bucket_and_prefix(sandbox, api):
    bucket = f"{sandbox.state['name']}-moved"
    api.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={
        "LocationConstraint": sandbox.state["region"]})
    policy = delivery_policy(bucket, "moved", sandbox.state["account_id"], sandbox.state["region"])
    api.s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    original = sandbox.state["access_logs"]
    _set_log_attributes(sandbox, api, bucket=bucket, prefix="moved")
    try:
        *_, client_port, _, _ = _request(sandbox, 443)
    finally:
        _set_log_attributes(sandbox, api, bucket=original["bucket"], prefix=original["prefix"])
    moved = LogReader(LogStore(sandbox, api, bucket))
    moved.since -= datetime.timedelta(seconds=5)
    entry = moved.entry_for(client_port)
    assert entry.listener == _listener(sandbox, 443)["arn"].rsplit("/", 1)[-1]
    assert all(key.startswith(f"moved/AWSLogs/{sandbox.state['account_id']}/") for key in
               moved.keys), moved.keys


def test_listener_created_with_an_alpn_policy_negotiates_its_preference(sandbox, api, logs):
    # moto's modify_listener ignores AlpnPolicy, so the policy comes with a new listener.
    group = _group(sandbox, "tcp8080")["arn"]
    listener = _add_listener(sandbox, api, 12443, group, sandbox.state["certificate"]["arn"],
                             AlpnPolicy=["HTTP2Preferred"])
    try:
        context = _client_context(sandbox)
        context.set_alpn_protocols(["http/1.1", "h2"])
        with socket.create_connection(sandbox.plane.addresses()[listener], timeout=5) as raw:
            client_port = raw.getsockname()[1]
            with context.wrap_socket(raw, server_hostname=_domain(sandbox)) as tls:
                chosen = tls.selected_alpn_protocol()
    finally:
        api.elbv2.delete_listener(ListenerArn=listener)
    assert chosen == "h2", f"HTTP2Preferred: expected h2 over the client's order, got {chosen}"
    entry = logs.entry_for(client_port)
    assert (entry.alpn_fe_protocol, entry.alpn_client_preference_list) == (
        "h2", ("http/1.1", "h2")), entry.format()
    _eventually("the deleted listener no longer served", lambda: listener not in
                sandbox.plane.addresses())


# ---- bad input and faults --------------------------------------------------------------------

def _still_serving(sandbox):
    assert _json(sandbox, 443)["server"] == "http", "the data plane stopped serving"


def _raw_connection(sandbox, port=443, timeout=5.0) -> socket.socket:
    return socket.create_connection(_address(sandbox, port), timeout=timeout)


def _read_until_closed(sock) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_garbage_instead_of_a_client_hello_is_closed_and_logged(sandbox, logs):
    with _raw_connection(sandbox) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_until_closed(sock) == b"", "expected the connection closed without a reply"
    entry = logs.entry_for(client_port)
    assert (entry.chosen_cert_arn, entry.tls_handshake_time, entry.tls_cipher) == (
        None, None, None), entry.format()
    _still_serving(sandbox)


def _tls13_only(context):
    context.minimum_version = ssl.TLSVersion.TLSv1_3


def _ecdsa_cipher_only(context):
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")  # the listener's key is RSA


@pytest.mark.parametrize("narrow, reason", [
    (_tls13_only, "TLSV1_ALERT_PROTOCOL_VERSION"),
    (_ecdsa_cipher_only, "SSLV3_ALERT_HANDSHAKE_FAILURE"),
])
def test_refused_protocol_or_cipher_gets_an_alert_and_an_entry(sandbox, logs, narrow, reason):
    context = _client_context(sandbox)
    narrow(context)
    with _raw_connection(sandbox) as raw:
        client_port = raw.getsockname()[1]
        with pytest.raises(ssl.SSLError) as refused:
            context.wrap_socket(raw, server_hostname=_domain(sandbox))
    assert refused.value.reason == reason, f"expected {reason}, got {refused.value}"
    entry = logs.entry_for(client_port)
    expected = (sandbox.state["certificate"]["arn"], None, None, None, _domain(sandbox))
    got = (entry.chosen_cert_arn, entry.tls_handshake_time, entry.tls_cipher,
           entry.tls_protocol_version, entry.domain_name)
    assert got == expected, f"entry {entry.format()}"
    _still_serving(sandbox)


def test_client_stalling_mid_handshake_is_cut_after_the_timeout(sandbox, logs):
    with _raw_connection(sandbox) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(bytes.fromhex("16030100c8010000c40303"))  # a ClientHello's first bytes
        started = time.monotonic()
        assert _read_until_closed(sock) == b""
        waited = time.monotonic() - started
    assert 0.8 <= waited <= 3.5, f"expected the 1 s handshake timeout, closed after {waited:.1f}"
    entry = logs.entry_for(client_port)
    assert entry.tls_handshake_time is None and entry.received_bytes == 0, entry.format()


def test_alert_sent_by_the_client_is_logged(sandbox, logs, tmp_path):
    other = certs.generate_chain(["unrelated.test"])
    (tmp_path / "other-ca.pem").write_bytes(other.ca_bundle_pem)
    context = ssl.create_default_context(cafile=str(tmp_path / "other-ca.pem"))
    with _raw_connection(sandbox) as raw:
        client_port = raw.getsockname()[1]
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname=_domain(sandbox))
    entry = logs.entry_for(client_port)
    assert entry.incoming_tls_alert == 48, f"expected unknown_ca (48): {entry.format()}"
    _still_serving(sandbox)


def test_all_targets_down_resets_the_client_then_recovers(sandbox, api):
    group = _group(sandbox, "tcp8080")
    stopped = [sandbox.compute.stop_backend("tcp8080", index) for index in (1, 2)]
    try:
        _eventually("both targets unhealthy", lambda: set(_health(api, group["arn"]).values())
                    == {"unhealthy"}, deadline_s=5)
        # No healthy target: the NLB fails open to all, each refuses, the client is reset.
        with _raw_connection(sandbox) as raw:
            client = MemoryTlsClient(raw, _client_context(sandbox), _domain(sandbox))
            client.send(f"GET / HTTP/1.1\r\nHost: {_domain(sandbox)}\r\n\r\n".encode())
            received, ended = client.receive_until_end()
        assert (received, ended) == (b"", "reset"), f"got {received!r}, then {ended}"
        assert _json(sandbox, 9443)["server"] == "https", "the other listener must keep serving"
    finally:
        for backend in stopped:
            sandbox.compute.start_backend("tcp8080", backend.index)
    _eventually("targets healthy again", lambda: set(_health(api, group["arn"]).values())
                == {"healthy"}, deadline_s=5)
    _still_serving(sandbox)


class LoopbackTarget:
    """A target of the tests' own on 127.0.0.1: each accepted connection goes to `_serve` in
    a thread of its own until `close()`."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection):
        raise NotImplementedError

    def close(self):
        self.server.close()


class MisbehavingTarget(LoopbackTarget):
    """A target on 127.0.0.1 that answers `GET /reset` with a partial answer and a TCP RST,
    and `GET /silent` with nothing at all until the client goes away."""

    PARTIAL = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial"

    def _serve(self, connection):
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = connection.recv(4096)
                if not chunk:
                    return  # a health check: connect and close
                request += chunk
            if request.startswith(b"GET /reset"):
                connection.sendall(self.PARTIAL)
                time.sleep(0.2)
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      b"\x01\x00\x00\x00\x00\x00\x00\x00")
                return
            _read_until_closed(connection)


def _add_listener(sandbox, api, port, group_arn, certificate_arn, **extra):
    balancer = sandbox.state["load_balancer"]["arn"]
    arn = api.elbv2.create_listener(
        LoadBalancerArn=balancer, Protocol="TLS", Port=port, SslPolicy=DEFAULT_POLICY,
        Certificates=[{"CertificateArn": certificate_arn}],
        DefaultActions=[{"Type": "forward", "TargetGroupArn": group_arn}], **extra,
    )["Listeners"][0]["ListenerArn"]
    _eventually(f"the new listener {port} served", lambda: arn in sandbox.plane.addresses())
    return arn


@pytest.fixture(scope="module")
def misbehaving(sandbox, api):
    """A listener on 10443 forwarding to a target group holding only a MisbehavingTarget."""
    target = MisbehavingTarget()
    vpc = sandbox.state["network"]["vpc_id"]
    group = api.elbv2.create_target_group(
        Name="misbehaving", Protocol="TCP", Port=target.port, VpcId=vpc, TargetType="ip",
        HealthCheckIntervalSeconds=10, HealthyThresholdCount=2,
    )["TargetGroups"][0]["TargetGroupArn"]
    api.elbv2.register_targets(TargetGroupArn=group,
                               Targets=[{"Id": "127.0.0.1", "Port": target.port}])
    listener = _add_listener(sandbox, api, 10443, group, sandbox.state["certificate"]["arn"])
    _eventually("the misbehaving target healthy", lambda: _health(api, group) == {
        target.port: "healthy"}, deadline_s=5)
    yield sandbox.plane.addresses()[listener]
    api.elbv2.delete_listener(ListenerArn=listener)
    api.elbv2.delete_target_group(TargetGroupArn=group)
    target.close()


def _tls_to(sandbox, address, timeout=5.0, context=None):
    raw = socket.create_connection(address, timeout=timeout)
    return raw.getsockname()[1], (context or _client_context(sandbox)).wrap_socket(
        raw, server_hostname=_domain(sandbox))


class MemoryTlsClient:
    """A TLS client over memory BIOs on a plain socket, so a TCP RST shows as itself
    (ssl.SSLSocket reports a reset as an EOF unless told otherwise), and each side of a
    half-close can be sent on its own. `server_side` makes it the server of the session."""

    def __init__(self, sock, context, server_name, server_side=False):
        self.sock, self.incoming, self.outgoing = sock, ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=server_side,
                                    server_hostname=None if server_side else server_name)
        self.reset_on_send = False
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._exchange()
        self._send_pending()

    def _exchange(self):
        self._send_pending()
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed during the handshake")
        self.incoming.write(data)

    def _send_pending(self):
        # A reset that arrives while sending is reported by receive().
        data = self.outgoing.read()
        try:
            if data:
                self.sock.sendall(data)
        except ConnectionResetError:
            self.reset_on_send = True

    def send(self, data: bytes) -> None:
        """Send plaintext."""
        self.tls.write(data)
        self._send_pending()

    def close_notify(self) -> None:
        """Finish sending with a close_notify alert, without waiting for the peer's."""
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # the peer's close_notify has not come yet; reading goes on
        self._send_pending()

    def finish(self) -> None:
        """Finish sending with a TCP FIN alone."""
        self.sock.shutdown(socket.SHUT_WR)

    def receive(self, until: bytes = b"") -> tuple[bytes, str]:
        """Plaintext until `until` has come (then `open`) or the connection ends, and how:
        `reset`, `eof` or `close_notify`."""
        received = b""
        if self.reset_on_send:
            return received, "reset"
        while not (until and until in received):
            try:
                chunk = self.tls.read(65536)
                if not chunk:
                    return received, "close_notify"
                received += chunk
                continue
            except ssl.SSLZeroReturnError:  # raised instead of b"" once we sent ours
                return received, "close_notify"
            except ssl.SSLWantReadError:
                pass
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return received, "reset"
            if not data:
                return received, "eof"
            self.incoming.write(data)
        return received, "open"

    def receive_until_end(self) -> tuple[bytes, str]:
        """Plaintext until the connection ends, and how: `reset`, `eof` or `close_notify`."""
        return self.receive()


class PlainStream:
    """A plain socket with MemoryTlsClient's verbs, for a plaintext target."""

    def __init__(self, sock):
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close_notify(self) -> None:
        pass  # no TLS: the FIN alone finishes

    def finish(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def receive(self, until: bytes = b"") -> tuple[bytes, str]:
        received = b""
        while not (until and until in received):
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return received, "reset"
            if not data:
                return received, "eof"
            received += data
        return received, "open"


def test_target_reset_mid_stream_resets_the_client(sandbox, logs, misbehaving):
    request = f"GET /reset HTTP/1.1\r\nHost: {_domain(sandbox)}\r\n\r\n".encode()
    with socket.create_connection(misbehaving, timeout=5) as raw:
        client_port = raw.getsockname()[1]
        client = MemoryTlsClient(raw, _client_context(sandbox), _domain(sandbox))
        client.send(request)
        received, ended = client.receive_until_end()
    assert (received, ended) == (MisbehavingTarget.PARTIAL, "reset"), (
        f"expected the partial answer then a TCP reset, got {received!r} then {ended}")
    entry = logs.entry_for(client_port)
    assert (entry.received_bytes, entry.sent_bytes) == (len(request), len(received)), (
        entry.format())
    _still_serving(sandbox)


def test_target_that_never_answers_holds_only_its_own_connection(sandbox, logs, misbehaving):
    request = f"GET /silent HTTP/1.1\r\nHost: {_domain(sandbox)}\r\n\r\n".encode()
    client_port, tls = _tls_to(sandbox, misbehaving)
    with tls:
        tls.settimeout(0.5)
        tls.sendall(request)
        with pytest.raises(socket.timeout):
            tls.recv(4096)
        _still_serving(sandbox)
    entry = logs.entry_for(client_port)
    assert (entry.received_bytes, entry.sent_bytes) == (len(request), 0), entry.format()


def test_sni_no_dns_name_could_be_still_reaches_a_tls_target(sandbox, logs):
    # Python's ssl refuses such a name as server_hostname (IDNA: a label is at most 63
    # bytes); pyOpenSSL sends it as it is, as any client may.
    from OpenSSL import SSL

    server_name = b"b" * 70
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    raw = socket.create_connection(_address(sandbox, 9443), timeout=5)
    raw.settimeout(None)  # pyOpenSSL reads a socket with a timeout as non-blocking; a
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))  # limit
    client_port = raw.getsockname()[1]
    connection = SSL.Connection(context, raw)
    connection.set_tlsext_host_name(server_name)
    connection.set_connect_state()
    answer = b""
    with raw:
        connection.do_handshake()
        connection.sendall(b"GET /long-sni HTTP/1.1\r\nHost: x\r\nAccept: application/json"
                           b"\r\nConnection: close\r\n\r\n")
        while True:
            try:
                chunk = connection.recv(65536)
            except (SSL.ZeroReturnError, SSL.SysCallError):
                break
            if not chunk:
                break
            answer += chunk
    body = answer.partition(b"\r\n\r\n")[2]
    assert answer.startswith(b"HTTP/1.1 200 "), f"expected the HTTPS target's answer: {answer!r}"
    document = json.loads(body)
    assert (document["server"], document["tls"]["server_name"]) == ("https", None), document
    entry = logs.entry_for(client_port)
    assert entry.domain_name == server_name.decode(), entry.format()
    _still_serving(sandbox)


def test_target_that_never_takes_the_connection_gets_the_client_reset(sandbox, api, logs,
                                                                     caplog):
    # A listening socket whose accept queue is full: the kernel drops further SYNs, so a
    # connection to it neither succeeds nor fails until the data plane gives up.
    full = socket.create_server(("127.0.0.1", 0), backlog=0)
    queued = socket.create_connection(full.getsockname())
    port = full.getsockname()[1]
    vpc = sandbox.state["network"]["vpc_id"]
    group = api.elbv2.create_target_group(
        Name="unreachable", Protocol="TCP", Port=port, VpcId=vpc, TargetType="ip",
    )["TargetGroups"][0]["TargetGroupArn"]
    api.elbv2.register_targets(TargetGroupArn=group, Targets=[{"Id": "127.0.0.1", "Port": port}])
    listener = _add_listener(sandbox, api, 11443, group, sandbox.state["certificate"]["arn"])
    saved, sandbox.plane.target_connect_timeout = sandbox.plane.target_connect_timeout, 0.5
    try:
        with caplog.at_level(logging.INFO, logger="infra.sandbox.proxy"):
            client_port, tls = _tls_to(sandbox, sandbox.plane.addresses()[listener])
            with tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    answer = tls.recv(4096)
                except (ConnectionResetError, ssl.SSLError):
                    answer = b""
            _still_serving(sandbox)
    finally:
        sandbox.plane.target_connect_timeout = saved
        api.elbv2.delete_listener(ListenerArn=listener)
        api.elbv2.delete_target_group(TargetGroupArn=group)
        queued.close()
        full.close()
    assert answer == b"", f"expected the client reset with no answer, got {answer!r}"
    said = [r.getMessage() for r in caplog.records if "no connection within 0.5 s" in
            r.getMessage()]
    assert said, f"expected the sandbox to say the target took no connection: {caplog.text}"
    entry = logs.entry_for(client_port)
    assert entry.sent_bytes == 0 and entry.tls_cipher is not None, entry.format()


class HalfCloseTarget(LoopbackTarget):
    """A target on 127.0.0.1, plaintext or TLS (`context`), whose first line says what to do:

    - `answer-at-eof`: read until the data plane finishes sending, then answer "answer to "
      and what came after the line, and finish;
    - `finish-first`: send GREETING and finish sending, then read until the data plane
      finishes;
    - `idle`: answer "ok" and read until the connection ends.

    What each connection received after its first line, and how its reading ended, is put
    on `results[mode]`. Health checks (connect, then close) come and go unrecorded.
    """

    GREETING = b"target here, and finished\n"
    MODES = ("answer-at-eof", "finish-first", "idle")

    def __init__(self, context=None):
        self.context = context
        self.results = {mode: queue.Queue() for mode in self.MODES}
        super().__init__()

    def _serve(self, connection):
        with connection:
            connection.settimeout(10)
            try:
                stream = (PlainStream(connection) if self.context is None
                          else MemoryTlsClient(connection, self.context, None, server_side=True))
                head, ended = stream.receive(until=b"\n")
            except (OSError, ssl.SSLError):
                return  # a health check, or a handshake cut short
            mode, _, rest = head.partition(b"\n")
            if ended != "open" or mode.decode() not in self.MODES:
                return
            self.results[mode.decode()].put(self._run(mode.decode(), stream, rest))

    def _run(self, mode, stream, rest):
        if mode == "finish-first":
            stream.send(self.GREETING)
            stream.close_notify()
            stream.finish()
        elif mode == "idle":
            stream.send(b"ok\n")
        more, ended = stream.receive()
        if mode == "answer-at-eof" and ended != "reset":
            stream.send(b"answer to " + rest + more)
            stream.close_notify()
            stream.finish()
        return rest + more, ended

    def result(self, mode, timeout=5.0):
        """(what the target received after the mode line, how its reading ended)."""
        try:
            return self.results[mode].get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the target recorded no {mode} connection within {timeout} s")


def _add_target_group(api, sandbox, name, protocol, port):
    vpc = sandbox.state["network"]["vpc_id"]
    group = api.elbv2.create_target_group(
        Name=name, Protocol=protocol, Port=port, VpcId=vpc, TargetType="ip",
        HealthCheckIntervalSeconds=10, HealthyThresholdCount=2,
    )["TargetGroups"][0]["TargetGroupArn"]
    api.elbv2.register_targets(TargetGroupArn=group, Targets=[{"Id": "127.0.0.1", "Port": port}])
    return group


@pytest.fixture(scope="module")
def half_close_paths(sandbox, api, tmp_path_factory):
    """Listener 13443 to a TCP target group and 14443 to a TLS target group, each holding
    one HalfCloseTarget; yields {"tcp" | "tls": (listener address, target)}."""
    files = certs.generate_chain(["target.test"]).write(tmp_path_factory.mktemp("target"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert_file, files.key_file)
    made = {}
    for path, port, target in (("tcp", 13443, HalfCloseTarget()),
                               ("tls", 14443, HalfCloseTarget(context))):
        group = _add_target_group(api, sandbox, f"half-close-{path}", path.upper(), target.port)
        listener = _add_listener(sandbox, api, port, group, sandbox.state["certificate"]["arn"])
        _eventually(f"the {path} half-close target healthy", lambda: _health(api, group) == {
            target.port: "healthy"}, deadline_s=5)
        made[path] = (listener, group, target)
    yield {path: (sandbox.plane.addresses()[listener], target)
           for path, (listener, _, target) in made.items()}
    for listener, group, target in made.values():
        api.elbv2.delete_listener(ListenerArn=listener)
        api.elbv2.delete_target_group(TargetGroupArn=group)
        target.close()


def _client_over(sandbox, address):
    raw = socket.create_connection(address, timeout=5)
    return raw, MemoryTlsClient(raw, _client_context(sandbox), _domain(sandbox))


# The target's reading ends as the data plane passes the client's half-close on: a FIN to a
# TCP target, close_notify (and a FIN) to a TLS target.
_TARGET_SEES = {"tcp": "eof", "tls": "close_notify"}


@pytest.mark.parametrize("path", ["tcp", "tls"])
@pytest.mark.parametrize("half_close", ["fin", "close_notify"])
def test_client_half_close_reaches_the_target_and_the_answer_still_comes_back(
        sandbox, half_close_paths, path, half_close):
    address, target = half_close_paths[path]
    payload = f"request then {half_close}".encode()
    raw, client = _client_over(sandbox, address)
    with raw:
        client.send(b"answer-at-eof\n" + payload)
        # The target answers only once it has seen the client finish.
        if half_close == "fin":
            client.finish()
        else:
            client.close_notify()
        answer, ended = client.receive()
    got = (answer, ended, target.result("answer-at-eof"))
    expected = (b"answer to " + payload, "close_notify", (payload, _TARGET_SEES[path]))
    assert got == expected, f"{path} path, client {half_close}: expected {expected}, got {got}"


@pytest.mark.parametrize("path", ["tcp", "tls"])
def test_target_finishing_first_reaches_the_client_which_can_still_send(
        sandbox, half_close_paths, path):
    address, target = half_close_paths[path]
    raw, client = _client_over(sandbox, address)
    with raw:
        client.send(b"finish-first\n")
        greeting, ended = client.receive()
        assert (greeting, ended) == (HalfCloseTarget.GREETING, "close_notify"), (
            f"{path} path: expected the greeting then close_notify, got {greeting!r}, {ended}")
        client.send(b"sent after the target finished")
        client.close_notify()
        got = target.result("finish-first")
        try:
            _read_until_closed(raw)  # both sides finished: the data plane closes
        except socket.timeout:
            pytest.fail(f"{path} path: both sides finished, yet the connection stayed open")
    expected = (b"sent after the target finished", _TARGET_SEES[path])
    assert got == expected, f"{path} path: the target expected {expected}, got {got}"


def test_idle_connection_is_reset_on_both_sides_and_logged_with_its_duration(
        sandbox, half_close_paths, logs):
    address, target = half_close_paths["tcp"]
    # Read when a handshake completes; 350 s as on the NLB unless changed.
    idle_timeout, sandbox.plane.idle_timeout = sandbox.plane.idle_timeout, 1.0
    try:
        raw, client = _client_over(sandbox, address)
        with raw:
            client_port = raw.getsockname()[1]
            client.send(b"idle\n")
            assert client.receive(until=b"ok\n") == (b"ok\n", "open")
            started = time.monotonic()
            received, ended = client.receive()
            idle = time.monotonic() - started
    finally:
        sandbox.plane.idle_timeout = idle_timeout
    assert idle_timeout == IDLE_TIMEOUT_SECONDS, f"expected 350 s by default, got {idle_timeout}"
    assert (received, ended) == (b"", "reset"), f"client: expected a reset, got {ended}"
    assert idle >= 0.8, f"expected the reset after the 1 s idle timeout, got it at {idle:.2f} s"
    assert target.result("idle")[1] == "reset", "target: expected a reset"
    entry = logs.entry_for(client_port)
    assert entry.connection_time >= 1000, (
        f"expected the connection's duration (over 1 s of idleness), got {entry.format()}")
    assert (entry.received_bytes, entry.sent_bytes) == (len(b"idle\n"), len(b"ok\n")), (
        entry.format())


def test_targets_failing_their_health_checks_still_get_traffic_fail_open(sandbox, api):
    group = _group(sandbox, "tcp8080")
    expected = {target["Port"] for target in group["targets"]}
    # Bound but never listening: every health check to this port is refused.
    with socket.socket() as nowhere:
        nowhere.bind(("127.0.0.1", 0))
        api.elbv2.modify_target_group(TargetGroupArn=group["arn"],
                                      HealthCheckPort=str(nowhere.getsockname()[1]))
        try:
            _eventually("every target of tcp8080 unhealthy", lambda: set(
                _health(api, group["arn"]).values()) == {"unhealthy"}, deadline_s=5)
            seen = {_json(sandbox, 443)["listen_port"] for _ in range(16)}
            assert seen == expected, (
                f"no healthy target: expected fail open to {expected}, got {seen}")
        finally:
            api.elbv2.modify_target_group(TargetGroupArn=group["arn"],
                                          HealthCheckPort="traffic-port")
    _eventually("the targets healthy again", lambda: set(
        _health(api, group["arn"]).values()) == {"healthy"}, deadline_s=5)


async def _held_tls_sessions(sandbox, count: int, fresh):
    """Open `count` TLS sessions to listener 443 at once and hold them; with all of them open
    run `fresh()` in a thread, then send a GET on each. Returns (client ports, answers,
    what fresh() returned)."""
    address, name = _address(sandbox, 443), _domain(sandbox)
    context = _client_context(sandbox)
    request = (f"GET / HTTP/1.1\r\nHost: {name}\r\nAccept: application/json\r\n"
               "Connection: close\r\n\r\n").encode()
    sessions = await asyncio.gather(*(
        asyncio.open_connection(*address, ssl=context, server_hostname=name)
        for _ in range(count)))
    ports = [writer.get_extra_info("sockname")[1] for _, writer in sessions]
    fresh_result = await asyncio.to_thread(fresh)

    async def ask(reader, writer):
        writer.write(request)
        answer = await reader.read()  # until the close that follows the answer
        writer.close()
        return answer

    answers = await asyncio.gather(*(ask(reader, writer) for reader, writer in sessions))
    return ports, answers, fresh_result


def test_thousand_silent_connections_and_held_tls_sessions_are_served_and_logged(sandbox,
                                                                                 logs):
    # 1000 connections that never send a ClientHello, held open while 300 TLS sessions
    # through the TCP path are open at once, then each asks for a page; a fresh connection
    # is served in the middle of it. The 1 s handshake timeout is lifted meanwhile, so the
    # 1000 stay open throughout.
    handshake_timeout, sandbox.plane.handshake_timeout = sandbox.plane.handshake_timeout, 30.0
    silent = []

    def fresh():
        status, _, payload, client_port, *_ = _request(sandbox, 443)
        return client_port, status, json.loads(payload)["server"]

    try:
        silent = [_raw_connection(sandbox) for _ in range(1000)]
        silent_ports = [sock.getsockname()[1] for sock in silent]
        _eventually("the 1000 silent connections accepted", lambda: (
            sandbox.plane.open_connections >= 1000), deadline_s=5)
        tls_ports, answers, (fresh_port, *fresh_answer) = asyncio.run(asyncio.wait_for(
            _held_tls_sessions(sandbox, 300, fresh), timeout=20))
        still_open = sandbox.plane.open_connections
    finally:
        sandbox.plane.handshake_timeout = handshake_timeout
        for sock in silent:
            sock.close()
    statuses = {answer.split(b" ", 2)[1] for answer in answers}
    assert statuses == {b"200"} and len(answers) == 300, (
        f"300 held TLS sessions: expected 300 answers of 200, got {len(answers)} with {statuses}")
    assert fresh_answer == [200, "http"], (
        f"a fresh connection meanwhile: expected 200 from http, got {fresh_answer}")
    assert still_open >= 1000, f"expected the 1000 silent connections still open, got {still_open}"

    wanted = silent_ports + tls_ports + [fresh_port]

    def all_logged():
        logs.refresh()
        return all(logs.by_port(port) for port in wanted)

    _eventually(f"an entry for each of the {len(wanted)} connections", all_logged, 10.0, 0.5)
    tls_entries = [logs.by_port(port)[0] for port in tls_ports + [fresh_port]]
    incomplete = [entry.format() for entry in tls_entries if entry.tls_cipher is None]
    assert not incomplete, f"TLS sessions logged without their cipher: {incomplete[:3]}"


def test_deleted_listener_certificate_refuses_only_that_listener(sandbox, api, logs, caplog):
    arn, chain = _import_certificate(api, [_domain(sandbox)])
    group = _group(sandbox, "tcp8080")["arn"]
    listener = _add_listener(sandbox, api, 11443, group, arn)
    address = sandbox.plane.addresses()[listener]
    context = ssl.create_default_context(cadata=chain.ca_bundle_pem.decode())
    try:
        assert _tls_to(sandbox, address, context=context)[1].version() == "TLSv1.2"
        api.acm.delete_certificate(CertificateArn=arn)  # moto allows this while in use

        def refused():
            try:
                _tls_to(sandbox, address, timeout=2.0, context=context)[1].close()
            except (ssl.SSLError, ConnectionResetError):
                return True
            return False

        _eventually("listener 11443 refusing after its certificate was deleted", refused)
        refused()
        _still_serving(sandbox)
        warnings = [r.getMessage() for r in caplog.records if "refuses connections" in
                    r.getMessage() and r.name.startswith("infra.sandbox")]
        assert len(warnings) == 1, f"expected the refusal logged once, got {warnings}"
    finally:
        api.elbv2.delete_listener(ListenerArn=listener)


def test_a_tcp_listener_is_named_as_not_served(sandbox, api, caplog):
    balancer = sandbox.state["load_balancer"]["arn"]
    forward = {"Type": "forward", "TargetGroupArn": _group(sandbox, "tcp8080")["arn"]}
    with caplog.at_level(logging.WARNING, logger="infra.sandbox.dataplane"):
        arn = api.elbv2.create_listener(
            LoadBalancerArn=balancer, Protocol="TCP", Port=12080, DefaultActions=[forward],
        )["Listeners"][0]["ListenerArn"]
        try:
            _eventually("a warning naming the TCP listener", lambda: any(
                "(port 12080) is TCP: the sandbox serves TLS listeners only" in r.getMessage()
                for r in caplog.records))
        finally:
            api.elbv2.delete_listener(ListenerArn=arn)
    assert arn not in sandbox.plane.addresses(), "a TCP listener must not be served"
    _still_serving(sandbox)


def test_nothing_above_made_the_data_plane_log_an_error(errors):
    messages = [f"{r.name}: {r.getMessage()}" for r in errors]
    assert not messages, "error-level records (tracebacks) from the data plane:\n" + "\n".join(
        messages)


# ---- stopping: the module's last test, since it ends the sandbox's traffic -------------------

def test_stop_flushes_an_entry_for_every_connection(sandbox, logs):
    ports = [_request(sandbox, 443)[3] for _ in range(3)]
    open_tls = [_tls_to(sandbox, _address(sandbox, port)) for port in (443, 9443)]
    silent = [_raw_connection(sandbox) for _ in range(2)]
    ports += [port for port, _ in open_tls] + [sock.getsockname()[1] for sock in silent]
    _eventually("every connection accepted", lambda: sandbox.plane.open_connections >= 4)
    try:
        sandbox.stop_traffic()  # ends open connections, flushes every pending entry to S3
        logs.refresh()
        counts = {port: len(logs.by_port(port)) for port in ports}
        assert set(counts.values()) == {1}, f"entries per client port after stop: {counts}"
    finally:
        for _, tls in open_tls:
            tls.close()
        for sock in silent:
            sock.close()
