"""Where NLB access-log objects live: the S3 key layout, the 5-minute windows, the ARN parts."""

# Key layout (NLB guide, load-balancer-access-logs, "Access log files"):
#   [prefix/]AWSLogs/ACCOUNT/elasticloadbalancing/REGION/YYYY/MM/DD/
#   ACCOUNT_elasticloadbalancing_REGION_net.LBNAME.LBID_ENDTIME_RANDOM.log.gz
# The load balancer's resource id `net/LBNAME/LBID` has its slashes turned into dots; ENDTIME
# is the end of the 5-minute window in UTC ("20181220T2340Z contains entries for requests made
# between 23:35 and 23:40"); YYYY/MM/DD is the delivery date, which is the end time's date.
# NLB keys carry no IP-address part (ALB keys do). Some organisations' trails put an
# organisation id after `AWSLogs/`; such keys are read, never written.

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

__all__ = [
    "WINDOW",
    "ArnError",
    "LoadBalancerResource",
    "LogObjectKey",
    "LogObjectKeyError",
    "elb_field",
    "listener_id",
    "load_balancer_resource",
    "object_key",
    "parse_object_key",
    "window_end",
]

WINDOW = timedelta(minutes=5)  # AWS publishes one object per node per 5-minute window
_END_FORMAT = "%Y%m%dT%H%MZ"
_ACCOUNT = re.compile(r"[0-9]{12}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")
_LB_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,30}[A-Za-z0-9])?")  # 1-32, AWS rule
_LB_ID = re.compile(r"[A-Za-z0-9]+")
_RANDOM = re.compile(r"[A-Za-z0-9]+")
_KEY = re.compile(
    r"(?:(?P<prefix>.+?)/)?AWSLogs/(?:(?P<org>o-[a-z0-9]{10,32})/)?"
    r"(?P<account>[0-9]{12})/elasticloadbalancing/(?P<region>[a-z0-9-]+)/"
    r"(?P<date>[0-9]{4}/[0-9]{2}/[0-9]{2})/"
    r"(?P<file_account>[0-9]{12})_elasticloadbalancing_(?P<file_region>[a-z0-9-]+)_"
    r"net\.(?P<name>[A-Za-z0-9-]+)\.(?P<id>[A-Za-z0-9]+)_"
    r"(?P<end>[0-9]{8}T[0-9]{4}Z)_(?P<random>[A-Za-z0-9]+)\.log\.gz"
)
_LAYOUT = (
    "[prefix/]AWSLogs/ACCOUNT/elasticloadbalancing/REGION/YYYY/MM/DD/"
    "ACCOUNT_elasticloadbalancing_REGION_net.LBNAME.LBID_YYYYMMDDTHHMMZ_RANDOM.log.gz"
)
_ELB_ARN = re.compile(
    r"arn:[a-z-]+:elasticloadbalancing:[a-z0-9-]+:[0-9]{12}:"
    r"(?P<kind>loadbalancer|listener)/(?:app|net|gwy)/(?P<name>[^/]+)/(?P<id>[^/]+)"
    r"(?:/(?P<listener>[^/]+))?"
)


class LogObjectKeyError(ValueError):
    """A log object key, or a part for one, outside the AWS key layout."""


class ArnError(ValueError):
    """An ARN that is not an Elastic Load Balancing load balancer or listener ARN."""


@dataclass(frozen=True)
class LogObjectKey:
    """The parts of a log object key. `prefix` is "" when the key has none;
    `organization_id` is None unless the key has the organisation segment."""

    prefix: str
    organization_id: str | None
    account_id: str
    region: str
    lb_name: str
    lb_id: str
    end_time: datetime
    random_part: str

    @property
    def elb(self) -> str:
        """The `elb` field the entries of this object carry: `net/LBNAME/LBID`."""
        return elb_field(self.lb_name, self.lb_id)


@dataclass(frozen=True)
class LoadBalancerResource:
    """A load balancer's name and id, the parts its log entries and keys are built from."""

    name: str
    lb_id: str

    @property
    def elb(self) -> str:
        """`net/NAME/ID`, the access log's `elb` field."""
        return elb_field(self.name, self.lb_id)


def window_end(t: datetime) -> datetime:
    """The end (UTC, aware) of the 5-minute window holding `t`; a naive `t` is UTC.

    Windows are half-open: 23:35:00 belongs to the window ending 23:40.
    """
    t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    start = t.replace(minute=t.minute - t.minute % 5, second=0, microsecond=0)
    return start + WINDOW


def elb_field(lb_name: str, lb_id: str) -> str:
    """`net/NAME/ID`: the NLB resource id, whatever type segment the ARN carried."""
    _require(_LB_NAME, lb_name, "load balancer name", "1-32 letters, digits and inner hyphens")
    _require(_LB_ID, lb_id, "load balancer id", "letters and digits, e.g. 50dc6c495c0c9188")
    return f"net/{lb_name}/{lb_id}"


def load_balancer_resource(arn: str) -> LoadBalancerResource:
    """Name and id from a load balancer ARN, `app/` (as moto writes it) or `net/` alike."""
    match = _ELB_ARN.fullmatch(arn)
    if match is None or match["kind"] != "loadbalancer" or match["listener"]:
        raise ArnError(
            f"{arn!r} is not a load balancer ARN like "
            "arn:aws:elasticloadbalancing:REGION:ACCOUNT:loadbalancer/net/NAME/ID"
        )
    return LoadBalancerResource(match["name"], match["id"])


def listener_id(listener_arn: str) -> str:
    """The listener id the access log writes: the last segment of the listener ARN."""
    match = _ELB_ARN.fullmatch(listener_arn)
    if match is None or match["kind"] != "listener" or not match["listener"]:
        raise ArnError(
            f"{listener_arn!r} is not a listener ARN like "
            "arn:aws:elasticloadbalancing:REGION:ACCOUNT:listener/net/NAME/LBID/LISTENERID"
        )
    return match["listener"]


def object_key(
    prefix: str | None,
    account_id: str,
    region: str,
    lb_name: str,
    lb_id: str,
    end_time: datetime,
    random_part: str,
) -> str:
    """The S3 key AWS gives a log object; `end_time` must be a 5-minute window's end.

    Raises LogObjectKeyError naming the part that does not fit the layout.
    """
    _check_prefix(prefix or "")
    _require(_ACCOUNT, account_id, "account id", "12 digits")
    _require(_REGION, region, "region", "a region name like us-east-2")
    segment = elb_field(lb_name, lb_id).replace("/", ".")
    _require(_RANDOM, random_part, "random part", "letters and digits")
    end = _check_window_end(end_time)
    directory = f"AWSLogs/{account_id}/elasticloadbalancing/{region}/{end:%Y/%m/%d}"
    name = (
        f"{account_id}_elasticloadbalancing_{region}_{segment}_"
        f"{end.strftime(_END_FORMAT)}_{random_part}.log.gz"
    )
    key = f"{directory}/{name}"
    return f"{prefix}/{key}" if prefix else key


def parse_object_key(key: str) -> LogObjectKey:
    """Split a log object key into its parts, checking that they agree with each other.

    Raises LogObjectKeyError naming the key and what is wrong with it.
    """
    match = _KEY.fullmatch(key)
    if match is None:
        raise LogObjectKeyError(f"{key!r} does not follow the NLB log key layout {_LAYOUT}")
    prefix = match["prefix"] or ""
    if "AWSLogs" in prefix:
        raise LogObjectKeyError(f"{key!r}: the prefix {prefix!r} contains AWSLogs")
    if match["file_account"] != match["account"] or match["file_region"] != match["region"]:
        raise LogObjectKeyError(
            f"{key!r}: the file name says {match['file_account']}/{match['file_region']}, "
            f"the path {match['account']}/{match['region']}"
        )
    try:
        end = datetime.strptime(match["end"], _END_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise LogObjectKeyError(f"{key!r}: {match['end']!r} is not a valid time") from None
    if f"{end:%Y/%m/%d}" != match["date"]:
        raise LogObjectKeyError(
            f"{key!r}: the date path {match['date']} is not the end time's date {end:%Y/%m/%d}"
        )
    return LogObjectKey(
        prefix=prefix,
        organization_id=match["org"],
        account_id=match["account"],
        region=match["region"],
        lb_name=match["name"],
        lb_id=match["id"],
        end_time=end,
        random_part=match["random"],
    )


def _require(pattern: re.Pattern, value: object, what: str, accepted: str) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise LogObjectKeyError(f"{what} {value!r} does not fit the log key: expected {accepted}")


def _check_prefix(prefix: str) -> None:
    # AWS refuses a prefix containing AWSLogs; a leading or trailing slash would give an
    # empty path segment, which AWS documents nowhere, so it is refused here too.
    if not isinstance(prefix, str) or "AWSLogs" in prefix:
        raise LogObjectKeyError(f"prefix {prefix!r}: it must be a string without AWSLogs")
    if prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        raise LogObjectKeyError(
            f"prefix {prefix!r}: expected no leading, trailing or doubled '/', e.g. 'logs/nlb'"
        )


def _check_window_end(end_time: object) -> datetime:
    if not isinstance(end_time, datetime):
        raise LogObjectKeyError(f"end time {end_time!r} is not a datetime")
    if end_time.tzinfo is None:
        end = end_time.replace(tzinfo=timezone.utc)
    else:
        end = end_time.astimezone(timezone.utc)
    if end != window_end(end - timedelta(microseconds=1)):
        raise LogObjectKeyError(
            f"end time {end_time.isoformat()} is not the end of a 5-minute window; "
            "pass window_end(time) of the entries' time"
        )
    return end
