"""Access-log delivery to S3 (moto in-process): keys, bodies, ACL, denied buckets, failures."""

import logging
import re
from datetime import timedelta

import pytest
from botocore.exceptions import EndpointConnectionError

from infra.access_logs import (
    InvalidEntryError,
    LogObjectKeyError,
    parse_object_key,
    window_end,
)
from infra.sandbox.log_delivery import CONTENT_TYPE, DELIVERY_ACL, LogDelivery, random_part
from tests.unit.log_delivery_support import (
    ACCOUNT,
    BUCKET,
    LB_ARN,
    LOGGER,
    OTHER_LB_ARN,
    REGION,
    T0,
    FlakyS3,
    client_error,
    entry,
    make_bucket,
    objects,
)

pytestmark = pytest.mark.unit


# ---- what one object looks like ---------------------------------------------------------------


def test_flush_writes_one_gzip_object_under_the_aws_key(s3):
    make_bucket(s3)
    delivery = LogDelivery(s3, ACCOUNT, REGION)
    recorded = [entry(3, T0 + timedelta(seconds=30)), entry(1, T0),
                entry(2, T0 + timedelta(seconds=1))]
    for item in recorded:
        delivery.record(LB_ARN, item, BUCKET, "logs")

    keys = delivery.flush()

    assert len(keys) == 1, f"expected one object, got {keys}"
    parsed = parse_object_key(keys[0])
    assert (parsed.prefix, parsed.account_id, parsed.region) == ("logs", ACCOUNT, REGION)
    assert (parsed.lb_name, parsed.lb_id) == ("my-nlb", "57434eb4d3e0a993")
    assert parsed.end_time == window_end(T0), f"got {parsed.end_time}"
    assert re.fullmatch(r"[a-z0-9]{8}", parsed.random_part), parsed.random_part
    stored = objects(s3)
    assert list(stored) == keys
    assert stored[keys[0]] == sorted(recorded, key=lambda e: e.time), "entries not sorted by time"
    assert delivery.pending() == 0


def test_object_metadata_is_gzip_without_content_encoding(s3):
    make_bucket(s3)
    delivery = LogDelivery(s3, ACCOUNT, REGION)
    delivery.record(LB_ARN, entry(1), BUCKET, "logs")
    (key,) = delivery.flush()
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentType"] == CONTENT_TYPE == "application/x-gzip"
    assert "ContentEncoding" not in head, f"got ContentEncoding {head.get('ContentEncoding')}"
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body[:2] == b"\x1f\x8b", f"body is not gzip: {body[:8]!r}"


def test_put_carries_the_bucket_owner_full_control_acl(s3):
    make_bucket(s3)
    sent = []

    def keep_headers(request, **_):
        sent.append(request.headers)

    s3.meta.events.register("before-send.s3.PutObject", keep_headers)
    try:
        delivery = LogDelivery(s3, ACCOUNT, REGION)
        delivery.record(LB_ARN, entry(1), BUCKET, "logs")
        (key,) = delivery.flush()
    finally:
        s3.meta.events.unregister("before-send.s3.PutObject", keep_headers)

    assert DELIVERY_ACL == "bucket-owner-full-control"
    acls = [headers.get("x-amz-acl", b"").decode() for headers in sent]
    assert acls == ["bucket-owner-full-control"], f"expected the canned ACL on the put, got {acls}"
    # moto records this canned ACL as the owner's FULL_CONTROL and nothing else.
    grants = s3.get_object_acl(Bucket=BUCKET, Key=key)["Grants"]
    assert [g["Permission"] for g in grants] == ["FULL_CONTROL"], f"got {grants}"
    assert grants[0]["Grantee"]["Type"] == "CanonicalUser"


def test_entries_of_two_windows_go_to_two_objects(s3):
    make_bucket(s3)
    delivery = LogDelivery(s3, ACCOUNT, REGION)
    later = T0 + timedelta(minutes=5)
    delivery.record(LB_ARN, entry(1, T0), BUCKET, "logs")
    delivery.record(LB_ARN, entry(2, later), BUCKET, "logs")
    keys = delivery.flush()
    ends = sorted(parse_object_key(k).end_time for k in keys)
    assert ends == [window_end(T0), window_end(later)], f"got {ends}"
    for key, entries in objects(s3).items():
        assert all(window_end(e.time) == parse_object_key(key).end_time for e in entries)


def test_each_load_balancer_gets_its_own_objects(s3):
    make_bucket(s3)
    delivery = LogDelivery(s3, ACCOUNT, REGION)
    delivery.record(LB_ARN, entry(1), BUCKET, "logs")
    delivery.record(OTHER_LB_ARN, entry(2, lb_arn=OTHER_LB_ARN), BUCKET, "logs")
    assert len(delivery.flush()) == 2
    stored = objects(s3)
    by_lb = {parse_object_key(k).elb: [e.elb for e in v] for k, v in stored.items()}
    assert by_lb == {
        "net/my-nlb/57434eb4d3e0a993": ["net/my-nlb/57434eb4d3e0a993"],
        "net/second/0123456789abcdef": ["net/second/0123456789abcdef"],
    }, f"got {by_lb}"


def test_prefix_change_writes_under_the_new_prefix(s3):
    make_bucket(s3, prefixes=("old", "new/deeper"))
    delivery = LogDelivery(s3, ACCOUNT, REGION)
    delivery.record(LB_ARN, entry(1), BUCKET, "old")
    delivery.record(LB_ARN, entry(2), BUCKET, "new/deeper")
    keys = delivery.flush()
    prefixes = sorted(parse_object_key(k).prefix for k in keys)
    assert prefixes == ["new/deeper", "old"], f"got {keys}"
    contents = {parse_object_key(k).prefix: [e.sent_bytes for e in v]
                for k, v in objects(s3).items()}
    assert contents == {"old": [1], "new/deeper": [2]}, f"got {contents}"


def test_no_prefix_writes_at_the_bucket_root(s3):
    make_bucket(s3, prefixes=("",))
    delivery = LogDelivery(s3, ACCOUNT, REGION)
    delivery.record(LB_ARN, entry(1), BUCKET, None)
    (key,) = delivery.flush()
    assert key.startswith(f"AWSLogs/{ACCOUNT}/elasticloadbalancing/{REGION}/"), key


# ---- denied buckets ---------------------------------------------------------------------------


def test_bucket_without_policy_gets_nothing_and_one_warning(s3, caplog):
    make_bucket(s3, prefixes=())
    delivery = LogDelivery(s3, ACCOUNT, REGION)
    delivery.record(LB_ARN, entry(1, T0), BUCKET, "logs")
    delivery.record(LB_ARN, entry(2, T0 + timedelta(minutes=5)), BUCKET, "logs")
    delivery.record(OTHER_LB_ARN, entry(3, lb_arn=OTHER_LB_ARN), BUCKET, "logs")

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        keys = delivery.flush()

    assert keys == [] and objects(s3) == {}
    warnings = [r.getMessage() for r in caplog.records if "Access Denied" in r.getMessage()]
    assert len(warnings) == 1, f"expected one warning for the bucket, got {warnings}"
    assert warnings[0].startswith(f"Access Denied for bucket: {BUCKET}."), warnings[0]
    assert "3 entries dropped" in warnings[0], warnings[0]
    assert delivery.pending() == 0, "denied entries are dropped, as AWS drops them"
    caplog.clear()
    assert delivery.flush() == [] and not caplog.records


def test_policy_for_another_prefix_denies(s3, caplog):
    make_bucket(s3, prefixes=("elsewhere",))
    delivery = LogDelivery(s3, ACCOUNT, REGION)
    delivery.record(LB_ARN, entry(1), BUCKET, "logs")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert delivery.flush() == []
    assert f"Access Denied for bucket: {BUCKET}" in caplog.text
    assert "logs/AWSLogs/123456789012/" in caplog.text, caplog.text
    assert objects(s3) == {}


def test_missing_bucket_is_denied(s3, caplog):
    delivery = LogDelivery(s3, ACCOUNT, REGION)
    delivery.record(LB_ARN, entry(1), "no-such-bucket-here", "logs")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert delivery.flush() == []
    assert "Access Denied for bucket: no-such-bucket-here" in caplog.text
    assert delivery.pending() == 0


def test_invalid_bucket_name_is_denied(s3, caplog):
    delivery = LogDelivery(s3, ACCOUNT, REGION)
    delivery.record(LB_ARN, entry(1), "not/a/bucket", "logs")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert delivery.flush() == []
    assert "Access Denied for bucket: not/a/bucket" in caplog.text and delivery.pending() == 0
    with pytest.raises(ValueError, match="bucket ''"):
        delivery.record(LB_ARN, entry(1), "", "logs")


def test_denied_bucket_does_not_stop_delivery_to_another(s3, caplog):
    make_bucket(s3)
    make_bucket(s3, bucket="closed-bucket", prefixes=())
    delivery = LogDelivery(s3, ACCOUNT, REGION)
    delivery.record(LB_ARN, entry(1), "closed-bucket", "logs")
    delivery.record(OTHER_LB_ARN, entry(2, lb_arn=OTHER_LB_ARN), BUCKET, "logs")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        keys = delivery.flush()
    assert len(keys) == 1 and parse_object_key(keys[0]).lb_name == "second", keys
    assert "Access Denied for bucket: closed-bucket" in caplog.text
    assert f"bucket: {BUCKET}" not in caplog.text


# ---- failures of the put ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [client_error("SlowDown"), client_error("InternalError"),
     EndpointConnectionError(endpoint_url="http://127.0.0.1:1")],
    ids=["SlowDown", "InternalError", "connection"],
)
def test_transient_put_failure_keeps_entries_for_the_next_flush(s3, caplog, error):
    make_bucket(s3)
    delivery = LogDelivery(FlakyS3(s3, error), ACCOUNT, REGION)
    delivery.record(LB_ARN, entry(1), BUCKET, "logs")
    delivery.record(LB_ARN, entry(2), BUCKET, "logs")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert delivery.flush() == []
    assert delivery.pending() == 2 and "kept for the next flush" in caplog.text
    (key,) = delivery.flush()
    assert [e.sent_bytes for e in objects(s3)[key]] == [1, 2]


def test_put_refused_by_s3_drops_the_entries(s3, caplog):
    make_bucket(s3)
    delivery = LogDelivery(FlakyS3(s3, client_error("AccessDenied")), ACCOUNT, REGION)
    delivery.record(LB_ARN, entry(1), BUCKET, "logs")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert delivery.flush() == []
    assert f"Access Denied for bucket: {BUCKET}" in caplog.text
    assert delivery.pending() == 0


# ---- what record refuses ---------------------------------------------------------------------


def test_record_refuses_an_entry_of_another_load_balancer(s3):
    delivery = LogDelivery(s3, ACCOUNT, REGION)
    with pytest.raises(InvalidEntryError, match="net/my-nlb/57434eb4d3e0a993"):
        delivery.record(LB_ARN, entry(1, lb_arn=OTHER_LB_ARN), BUCKET, "logs")


@pytest.mark.parametrize("prefix", ["logs/", "/logs", "x/AWSLogs"])
def test_record_refuses_a_prefix_aws_refuses(s3, prefix):
    delivery = LogDelivery(s3, ACCOUNT, REGION)
    with pytest.raises(LogObjectKeyError, match=re.escape(repr(prefix))):
        delivery.record(LB_ARN, entry(1), BUCKET, prefix)
    assert delivery.pending() == 0


def test_random_part_is_8_lowercase_letters_or_digits():
    parts = {random_part() for _ in range(50)}
    assert all(re.fullmatch(r"[a-z0-9]{8}", p) for p in parts), parts
    assert len(parts) == 50, "random parts repeat"


@pytest.mark.parametrize(("account", "region"), [("1234", REGION), (ACCOUNT, "nowhere")])
def test_account_and_region_are_checked_at_construction(s3, account, region):
    with pytest.raises(LogObjectKeyError, match="1234|nowhere"):
        LogDelivery(s3, account, region)
