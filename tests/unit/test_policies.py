"""Tests of infra.policies: the table against the reference, and contexts built from it."""

import logging
import random
import ssl
import warnings

import pytest

from fixtures import tls_probe
from infra import certs, policies
from infra._openssl import set_tls13_ciphersuites
from tests.unit.tls_server import TlsServer, chain_context

pytestmark = pytest.mark.unit

# The reference's cipher groups (aws-nlb.md, section 3), written out independently of the
# module under test.
GROUPS = {
    "T13": {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"},
    "EG": {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
           "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384"},
    "E2": {"ECDHE-ECDSA-AES128-SHA256", "ECDHE-RSA-AES128-SHA256",
           "ECDHE-ECDSA-AES256-SHA384", "ECDHE-RSA-AES256-SHA384"},
    "E1": {"ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA",
           "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA"},
    "R2": {"AES128-GCM-SHA256", "AES128-SHA256", "AES256-GCM-SHA384", "AES256-SHA256"},
    "R1": {"AES128-SHA", "AES256-SHA"},
    "3DES": {"DES-CBC3-SHA"},
}
ALL18 = "EG E2 E1 R2 R1"
# (policy, lowest protocol, highest protocol, groups, cipher count) as the reference lists them.
REFERENCE = [
    ("ELBSecurityPolicy-2016-08", "TLSv1", "TLSv1.2", ALL18, 18),
    ("ELBSecurityPolicy-2015-05", "TLSv1", "TLSv1.2", ALL18, 18),
    ("ELBSecurityPolicy-TLS13-1-2-2021-06", "TLSv1.2", "TLSv1.3", "T13 EG E2", 11),
    ("ELBSecurityPolicy-TLS13-1-2-Res-2021-06", "TLSv1.2", "TLSv1.3", "T13 EG", 7),
    ("ELBSecurityPolicy-TLS13-1-2-Ext1-2021-06", "TLSv1.2", "TLSv1.3", "T13 EG E2 R2", 15),
    ("ELBSecurityPolicy-TLS13-1-2-Ext2-2021-06", "TLSv1.2", "TLSv1.3", "T13 " + ALL18, 21),
    ("ELBSecurityPolicy-TLS13-1-1-2021-06", "TLSv1.1", "TLSv1.3", "T13 " + ALL18, 21),
    ("ELBSecurityPolicy-TLS13-1-0-2021-06", "TLSv1", "TLSv1.3", "T13 " + ALL18, 21),
    ("ELBSecurityPolicy-TLS13-1-3-2021-06", "TLSv1.3", "TLSv1.3", "T13", 3),
    ("ELBSecurityPolicy-FS-1-2-Res-2020-10", "TLSv1.2", "TLSv1.2", "EG", 4),
    ("ELBSecurityPolicy-FS-1-2-Res-2019-08", "TLSv1.2", "TLSv1.2", "EG E2", 8),
    ("ELBSecurityPolicy-FS-1-2-2019-08", "TLSv1.2", "TLSv1.2", "EG E2 E1", 12),
    ("ELBSecurityPolicy-FS-1-1-2019-08", "TLSv1.1", "TLSv1.2", "EG E2 E1", 12),
    ("ELBSecurityPolicy-FS-2018-06", "TLSv1", "TLSv1.2", "EG E2 E1", 12),
    ("ELBSecurityPolicy-TLS-1-2-2017-01", "TLSv1.2", "TLSv1.2", "EG E2 R2", 12),
    ("ELBSecurityPolicy-TLS-1-2-Ext-2018-06", "TLSv1.2", "TLSv1.2", ALL18, 18),
    ("ELBSecurityPolicy-TLS-1-1-2017-01", "TLSv1.1", "TLSv1.2", ALL18, 18),
    ("ELBSecurityPolicy-TLS-1-0-2015-04", "TLSv1", "TLSv1.2", ALL18 + " 3DES", 19),
]
PQ_NAMES = [
    "ELBSecurityPolicy-TLS13-1-3-PQ-2025-09", "ELBSecurityPolicy-TLS13-1-2-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09", "ELBSecurityPolicy-TLS13-1-2-Ext1-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Ext2-PQ-2025-09", "ELBSecurityPolicy-TLS13-1-0-PQ-2025-09",
]
ORDER_2016_08 = [
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256", "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA384", "ECDHE-RSA-AES256-SHA", "ECDHE-ECDSA-AES256-SHA",
    "AES128-GCM-SHA256", "AES128-SHA256", "AES128-SHA", "AES256-GCM-SHA384", "AES256-SHA256",
    "AES256-SHA",
]
# moto 5.2.5 gives this PQ policy Ext2's 21 suites; the table keeps Ext1's 15 (the reference
# assumes a PQ policy's ciphers equal its twin's).
MOTO_DIVERGENCES = {"ELBSecurityPolicy-TLS13-1-2-Ext1-PQ-2025-09"}


def test_table_holds_the_reference_policies_and_the_pq_twins():
    expected = {row[0] for row in REFERENCE} | set(PQ_NAMES)
    assert set(policies.POLICIES) == expected, (
        f"missing {expected - set(policies.POLICIES)}, extra {set(policies.POLICIES) - expected}"
    )


@pytest.mark.parametrize(
    "name, lowest, highest, groups, count", REFERENCE, ids=[row[0] for row in REFERENCE]
)
def test_policy_matches_reference_row(name, lowest, highest, groups, count):
    policy = policies.get_policy(name)
    expected_protocols = policies.PROTOCOLS[
        policies.PROTOCOLS.index(lowest):policies.PROTOCOLS.index(highest) + 1
    ]
    assert policy.protocols == expected_protocols
    expected_ciphers = set().union(*(GROUPS[group] for group in groups.split()))
    assert len(policy.ciphers) == count, f"{name}: expected {count}, got {len(policy.ciphers)}"
    assert set(policy.ciphers) == expected_ciphers
    assert len(set(policy.ciphers)) == len(policy.ciphers), f"{name} repeats a cipher"


def test_2016_08_priority_order_is_the_reference_order():
    assert list(policies.get_policy("ELBSecurityPolicy-2016-08").ciphers) == ORDER_2016_08


@pytest.mark.parametrize("name", sorted(policies.POLICIES))
def test_every_policy_lists_tls13_first_then_the_2016_08_order(name):
    policy = policies.POLICIES[name]
    tls13 = [c for c in policy.ciphers if c.startswith("TLS_")]
    assert list(policy.ciphers[:len(tls13)]) == tls13, "TLS 1.3 suites come first"
    assert policy.tls13_ciphers + policy.legacy_ciphers == policy.ciphers
    legacy = [c for c in policy.legacy_ciphers if c != "DES-CBC3-SHA"]
    assert legacy == [c for c in ORDER_2016_08 if c in legacy]


def test_pq_twins_and_2015_05_equal_their_originals():
    for name in PQ_NAMES:
        twin = policies.get_policy(name.replace("-PQ-2025-09", "-2021-06"))
        policy = policies.get_policy(name)
        assert (policy.protocols, policy.ciphers) == (twin.protocols, twin.ciphers), name
    old, new = (policies.get_policy(f"ELBSecurityPolicy-{d}") for d in ("2015-05", "2016-08"))
    assert (old.protocols, old.ciphers) == (new.protocols, new.ciphers)


def test_des_cbc3_sha_is_last_in_tls_1_0_2015_04():
    assert policies.get_policy("ELBSecurityPolicy-TLS-1-0-2015-04").ciphers[-1] == "DES-CBC3-SHA"


def test_unknown_policy_names_the_value_and_the_accepted_names():
    with pytest.raises(policies.UnknownPolicyError) as caught:
        policies.get_policy("ELBSecurityPolicy-2099-01")
    message = str(caught.value)
    assert "'ELBSecurityPolicy-2099-01'" in message and "ELBSecurityPolicy-2016-08" in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("name, rsa_count, ec_count", [
    ("ELBSecurityPolicy-2016-08", 12, 6),
    ("ELBSecurityPolicy-TLS13-1-2-Res-2021-06", 5, 5),
    ("ELBSecurityPolicy-TLS13-1-3-2021-06", 3, 3),
    ("ELBSecurityPolicy-TLS-1-0-2015-04", 13, 6),
    ("ELBSecurityPolicy-TLS13-1-0-2021-06", 15, 9),
])
def test_ciphers_for_key_keeps_what_the_key_can_authenticate(name, rsa_count, ec_count):
    policy = policies.get_policy(name)
    rsa_ciphers = policies.ciphers_for_key(policy, "RSA")
    ec_ciphers = policies.ciphers_for_key(policy, "EC")
    assert (len(rsa_ciphers), len(ec_ciphers)) == (rsa_count, ec_count)
    assert not any("ECDSA" in c for c in rsa_ciphers)
    assert all(c.startswith(("TLS_", "ECDHE-ECDSA-")) for c in ec_ciphers)
    assert set(policy.tls13_ciphers) <= set(rsa_ciphers) & set(ec_ciphers)
    assert set(rsa_ciphers) | set(ec_ciphers) == set(policy.ciphers)
    assert list(rsa_ciphers) == [c for c in policy.ciphers if c in rsa_ciphers], "order kept"


def test_ciphers_for_key_refuses_an_unknown_algorithm():
    with pytest.raises(policies.UnknownKeyAlgorithmError, match="'DSA'.*RSA, EC"):
        policies.ciphers_for_key(policies.get_policy("ELBSecurityPolicy-2016-08"), "DSA")


@pytest.mark.parametrize("name", sorted(policies.POLICIES))
def test_backend_policy_follows_the_listener_policy_tls13_support(name):
    listener = policies.POLICIES[name]
    expected = ("ELBSecurityPolicy-TLS13-1-0-2021-06" if "TLSv1.3" in listener.protocols
                else "ELBSecurityPolicy-2016-08")
    assert policies.backend_policy(listener).name == expected


@pytest.mark.parametrize("name, expected", [
    ("ELBSecurityPolicy-2016-08", (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_2)),
    ("ELBSecurityPolicy-TLS13-1-3-2021-06", (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3)),
    ("ELBSecurityPolicy-FS-1-1-2019-08", (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_2)),
    ("ELBSecurityPolicy-TLS13-1-2-2021-06", (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)),
])
def test_protocol_range(name, expected):
    assert policies.protocol_range(policies.get_policy(name)) == expected


@pytest.mark.parametrize("name", sorted(policies.POLICIES))
def test_openssl_strings_are_accepted_by_a_real_context_in_priority_order(name):
    policy = policies.POLICIES[name]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cipher_string = policies.openssl_cipher_string(policy)
    legacy_protocol = {"TLSv1", "TLSv1.1"} & set(policy.protocols)
    sha1 = any(c.endswith("-SHA") for c in policy.ciphers)
    assert cipher_string.endswith(":@SECLEVEL=0") == bool(legacy_protocol or sha1), cipher_string
    if cipher_string:
        context.set_ciphers(cipher_string)
    set_tls13_ciphersuites(context, policies.tls13_ciphersuites(policy))
    listed = [c["name"] for c in context.get_ciphers()]
    offerable = policies.offerable_ciphers()
    expected = [c for c in policy.ciphers if c in offerable]
    if not cipher_string:  # a TLS 1.3-only policy leaves the older list alone
        listed = [c for c in listed if c.startswith("TLS_")]
    assert listed == expected, f"expected {expected}, context lists {listed}"


def test_policy_from_api_sorts_by_priority_and_protocol():
    policy = policies.get_policy("ELBSecurityPolicy-TLS13-1-2-Res-2021-06")
    ciphers = [{"Name": c, "Priority": i + 1} for i, c in enumerate(policy.ciphers)]
    random.Random(7).shuffle(ciphers)
    described = {"Name": policy.name, "SslProtocols": ["TLSv1.3", "TLSv1.2"], "Ciphers": ciphers}
    assert policies.policy_from_api(described) == policy


def test_policy_from_api_refuses_protocols_it_cannot_name():
    with pytest.raises(ValueError, match="SSLv3"):
        policies.policy_from_api({"Name": "x", "SslProtocols": ["SSLv3"], "Ciphers": []})


@pytest.fixture(scope="module")
def moto_policies():
    """describe_ssl_policies as moto answers it, in-process with fake credentials."""
    import os

    import boto3
    from moto import mock_aws

    fake = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {key: os.environ.get(key) for key in fake}
    os.environ.update(fake)
    try:
        with mock_aws():
            client = boto3.client("elbv2", region_name="us-east-1")
            return client.describe_ssl_policies()["SslPolicies"]
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_policy_from_api_matches_the_table_for_every_policy_moto_knows(moto_policies):
    assert len(moto_policies) >= 18, [p["Name"] for p in moto_policies]
    for described in moto_policies:
        from_api = policies.policy_from_api(described)
        table = policies.get_policy(from_api.name)
        assert from_api.protocols == table.protocols, from_api.name
        if from_api.name in MOTO_DIVERGENCES:
            assert set(from_api.ciphers) != set(table.ciphers), (
                f"moto now agrees on {from_api.name}; drop it from MOTO_DIVERGENCES"
            )
            continue
        assert set(from_api.ciphers) == set(table.ciphers), from_api.name
        # What a handshake can observe: the order among the suites one key type can serve.
        for key_algorithm in policies.KEY_ALGORITHMS:
            got = policies.ciphers_for_key(from_api, key_algorithm)
            expected = policies.ciphers_for_key(table, key_algorithm)
            assert got == expected, f"{from_api.name} {key_algorithm}: {got} != {expected}"


@pytest.fixture(scope="module")
def chains():
    return {"RSA": certs.generate_chain(["listener.test"], "RSA_2048"),
            "EC": certs.generate_chain(["listener.test"], "EC_prime256v1")}


@pytest.mark.parametrize("name, key_algorithm", [
    ("ELBSecurityPolicy-2016-08", "RSA"),
    ("ELBSecurityPolicy-TLS13-1-2-Res-2021-06", "EC"),
    ("ELBSecurityPolicy-TLS-1-0-2015-04", "RSA"),
    ("ELBSecurityPolicy-TLS13-1-3-2021-06", "EC"),
    ("ELBSecurityPolicy-FS-1-1-2019-08", "EC"),
])
def test_configured_server_accepts_exactly_the_policy(chains, tmp_path, name, key_algorithm):
    policy = policies.get_policy(name)
    context = chain_context(chains[key_algorithm], tmp_path)
    policies.configure_context(context, policy, server=True)
    with TlsServer(context) as server:
        scan = tls_probe.scan("127.0.0.1", server.port, "listener.test")
    difference = tls_probe.compare(scan, policy, key_algorithm)
    assert difference.ok, difference.describe()
    allowed = policies.ciphers_for_key(policy, key_algorithm)
    for result in scan.protocols:
        if result.accepted and result.protocol != "TLSv1.3":
            first = next(c for c in allowed if c in result.accepted_ciphers)
            assert result.negotiated_cipher == first, f"{result.protocol}: server preference"
    if name.endswith("2015-04"):
        assert {str(f) for f in difference.untestable} == {
            "TLSv1 DES-CBC3-SHA", "TLSv1.1 DES-CBC3-SHA", "TLSv1.2 DES-CBC3-SHA"}


def test_configure_context_leaves_out_ciphers_openssl_cannot_offer(caplog):
    assert "DES-CBC3-SHA" not in policies.offerable_ciphers(), "this build has 3DES after all"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with caplog.at_level(logging.DEBUG, logger="infra.policies"):
        policies.configure_context(
            context, policies.get_policy("ELBSecurityPolicy-TLS-1-0-2015-04"), server=True
        )
    assert "DES-CBC3-SHA" in caplog.text
    assert [r.levelno for r in caplog.records if "DES" in r.getMessage()] == [logging.DEBUG]


def test_configure_context_for_tls_1_0_emits_no_deprecation_warning():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        policies.configure_context(
            context, policies.get_policy("ELBSecurityPolicy-TLS13-1-0-2021-06"), server=False
        )
    assert caught == [], [str(w.message) for w in caught]
    assert context.minimum_version == ssl.TLSVersion.TLSv1


def test_client_configured_with_a_policy_offers_only_its_ciphers(chains, tmp_path):
    """The NLB-to-target leg: a client context built from the backend policy."""
    server_context = chain_context(chains["RSA"], tmp_path)
    server_context.set_ciphers("AES128-SHA:ECDHE-RSA-AES128-GCM-SHA256")
    server_context.maximum_version = ssl.TLSVersion.TLSv1_2
    with TlsServer(server_context) as server:
        # The server prefers AES128-SHA: a client offering it gets it, one without it
        # falls back to the ECDHE suite, and a TLS 1.3-only client gets nothing.
        for name, expected in (("ELBSecurityPolicy-2016-08", "AES128-SHA"),
                               ("ELBSecurityPolicy-FS-1-2-Res-2020-10",
                                "ECDHE-RSA-AES128-GCM-SHA256"),
                               ("ELBSecurityPolicy-TLS13-1-3-2021-06", None)):
            client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
            policies.configure_context(client, policies.get_policy(name), server=False)
            got = _client_cipher(client, server.port)
            assert got == expected, f"{name}: expected {expected}, got {got}"


def _client_cipher(client: ssl.SSLContext, port: int):
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with client.wrap_socket(raw, server_hostname="listener.test") as tls:
                return tls.cipher()[0]
        except ssl.SSLError:
            return None
