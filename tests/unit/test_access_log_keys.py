"""The access-log object keys, 5-minute windows and ARN parts, against the NLB guide."""

import dataclasses
from datetime import datetime, timedelta, timezone

import pytest

from infra.access_logs import (
    ArnError,
    LogObjectKeyError,
    elb_field,
    listener_id,
    load_balancer_resource,
    object_key,
    parse_object_key,
    window_end,
)

pytestmark = pytest.mark.unit

UTC = timezone.utc
MOTO_LB_ARN = (
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/my-nlb/"
    "57434eb4d3e0a993"
)
MOTO_LISTENER_ARN = (
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/my-nlb/"
    "57434eb4d3e0a993/0c63aec2d168e1a0"
)


# ---- keys ---------------------------------------------------------------------------------------


def test_object_key_has_the_documented_layout():
    # NLB guide: "an end time of 20181220T2340Z contains entries for requests made between
    # 23:35 and 23:40".
    end = window_end(datetime(2018, 12, 20, 23, 37, 12, tzinfo=UTC))
    key = object_key(
        "my-prefix", "671290407336", "us-east-2", "my-network-loadbalancer",
        "c6e77e28c25b2234", end, "abcd1234",
    )
    expected = (
        "my-prefix/AWSLogs/671290407336/elasticloadbalancing/us-east-2/2018/12/20/"
        "671290407336_elasticloadbalancing_us-east-2_net.my-network-loadbalancer."
        "c6e77e28c25b2234_20181220T2340Z_abcd1234.log.gz"
    )
    assert key == expected, f"expected\n{expected}\ngot\n{key}"


@pytest.mark.parametrize("prefix", ["", None])
def test_object_key_without_prefix_starts_at_awslogs(prefix):
    end = datetime(2018, 12, 20, 23, 40, tzinfo=UTC)
    key = object_key(prefix, "671290407336", "us-east-2", "nlb", "c6e7", end, "x1")
    assert key.startswith("AWSLogs/671290407336/"), f"got {key}"


def test_object_key_round_trips_through_parse():
    end = datetime(2024, 1, 2, 0, 0, tzinfo=UTC)
    key = object_key("a/b-c", "123456789012", "eu-west-1", "my-nlb", "57434eb4d3e0a993", end,
                     "q1w2e3r4")
    parsed = parse_object_key(key)
    assert parsed.prefix == "a/b-c" and parsed.organization_id is None
    assert (parsed.account_id, parsed.region) == ("123456789012", "eu-west-1")
    assert (parsed.lb_name, parsed.lb_id) == ("my-nlb", "57434eb4d3e0a993")
    assert parsed.end_time == end and parsed.random_part == "q1w2e3r4"
    assert parsed.elb == "net/my-nlb/57434eb4d3e0a993"
    assert "/2024/01/02/" in key, "the date path is the end time's date"


def test_parse_object_key_accepts_organisation_segment():
    end = datetime(2024, 1, 2, 0, 5, tzinfo=UTC)
    key = object_key("logs", "123456789012", "us-east-1", "nlb", "abc", end, "r4nd0m00")
    with_org = key.replace("AWSLogs/", "AWSLogs/o-a1b2c3d4e5/")
    parsed = parse_object_key(with_org)
    assert parsed.organization_id == "o-a1b2c3d4e5"
    assert dataclasses.replace(parsed, organization_id=None) == parse_object_key(key)


GOOD_KEY = (
    "p/AWSLogs/123456789012/elasticloadbalancing/us-east-1/2024/01/02/"
    "123456789012_elasticloadbalancing_us-east-1_net.nlb.abc_20240102T0005Z_r4nd0m00.log.gz"
)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (GOOD_KEY.replace("_net.", "_app."), "layout"),
        (GOOD_KEY.replace(".log.gz", ".log"), "layout"),
        (GOOD_KEY.replace("123456789012_", "210987654321_"), "file name says"),
        (GOOD_KEY.replace("/02/", "/03/"), "date path"),
        (GOOD_KEY.replace("T0005Z", "T2575Z"), "not a valid time"),
        ("AWSLogs/" + GOOD_KEY, "AWSLogs"),
        (GOOD_KEY.replace("_us-east-1_", "_us-east-1_10.0.0.1_"), "layout"),
    ],
)
def test_parse_object_key_refuses_other_layouts(key, reason):
    assert parse_object_key(GOOD_KEY).lb_name == "nlb"
    with pytest.raises(LogObjectKeyError) as caught:
        parse_object_key(key)
    assert reason in str(caught.value) and repr(key) in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"end_time": datetime(2024, 1, 2, 0, 3, tzinfo=UTC)}, "5-minute window"),
        ({"end_time": datetime(2024, 1, 2, 0, 5, 1, tzinfo=UTC)}, "5-minute window"),
        ({"prefix": "logs/"}, "'logs/'"),
        ({"prefix": "/logs"}, "'/logs'"),
        ({"prefix": "x/AWSLogs"}, "AWSLogs"),
        ({"account_id": "12345"}, "'12345'"),
        ({"region": "US-EAST-1"}, "'US-EAST-1'"),
        ({"lb_name": "my_nlb"}, "'my_nlb'"),
        ({"random_part": "ab-cd"}, "'ab-cd'"),
    ],
)
def test_object_key_refuses_parts_outside_the_layout(changes, named):
    parts = dict(
        prefix="logs", account_id="123456789012", region="us-east-1", lb_name="nlb",
        lb_id="abc", end_time=datetime(2024, 1, 2, 0, 5, tzinfo=UTC), random_part="abcd1234",
    )
    parts.update(changes)
    with pytest.raises(LogObjectKeyError) as caught:
        object_key(**parts)
    assert named in str(caught.value), f"message does not name {named}: {caught.value}"


@pytest.mark.parametrize(
    ("t", "end"),
    [
        (datetime(2018, 12, 20, 23, 35, 0), datetime(2018, 12, 20, 23, 40)),
        (datetime(2018, 12, 20, 23, 39, 59, 999999), datetime(2018, 12, 20, 23, 40)),
        (datetime(2018, 12, 20, 23, 40, 0), datetime(2018, 12, 20, 23, 45)),
        (datetime(2018, 12, 31, 23, 58), datetime(2019, 1, 1, 0, 0)),
    ],
)
def test_window_end_is_the_end_of_the_half_open_5_minute_window(t, end):
    assert window_end(t) == end.replace(tzinfo=UTC)


def test_window_end_converts_to_utc():
    t = datetime(2024, 5, 1, 14, 1, tzinfo=timezone(timedelta(hours=2)))
    assert window_end(t) == datetime(2024, 5, 1, 12, 5, tzinfo=UTC)


# ---- ARNs ---------------------------------------------------------------------------------------


def test_elb_field_says_net_for_a_moto_app_arn():
    resource = load_balancer_resource(MOTO_LB_ARN)
    assert (resource.name, resource.lb_id) == ("my-nlb", "57434eb4d3e0a993")
    assert resource.elb == "net/my-nlb/57434eb4d3e0a993"
    assert elb_field("my-nlb", "57434eb4d3e0a993") == resource.elb


def test_load_balancer_resource_reads_a_real_net_arn():
    arn = MOTO_LB_ARN.replace("/app/", "/net/").replace("us-east-1", "cn-north-1")
    arn = arn.replace("arn:aws:", "arn:aws-cn:")
    assert load_balancer_resource(arn).elb == "net/my-nlb/57434eb4d3e0a993"


def test_listener_id_is_the_last_arn_segment():
    assert listener_id(MOTO_LISTENER_ARN) == "0c63aec2d168e1a0"
    assert listener_id(MOTO_LISTENER_ARN.replace("/app/", "/net/")) == "0c63aec2d168e1a0"


@pytest.mark.parametrize(
    ("function", "arn"),
    [
        (load_balancer_resource, MOTO_LISTENER_ARN),
        (load_balancer_resource, "arn:aws:elasticloadbalancing:us-east-1:123456789012:"
                                 "targetgroup/tg/0123456789abcdef"),
        (listener_id, MOTO_LB_ARN),
        (listener_id, "not an arn"),
    ],
)
def test_arn_helpers_refuse_other_arns(function, arn):
    with pytest.raises(ArnError) as caught:
        function(arn)
    assert repr(arn) in str(caught.value), str(caught.value)
