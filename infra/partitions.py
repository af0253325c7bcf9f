"""The AWS partition of a region, so every ARN and service domain is built for it."""

import re

__all__ = ["PartitionError", "partition_of", "dns_suffix", "REGION_PATTERN"]

# Region names are lowercase words separated by hyphens and end in a number
# (eu-west-1, cn-northwest-1, us-gov-west-1, ap-southeast-3).
REGION_PATTERN = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")

_PARTITIONS = (
    ("cn-", "aws-cn"),
    ("us-gov-", "aws-us-gov"),
)
_DNS_SUFFIXES = {
    "aws": "amazonaws.com",
    "aws-cn": "amazonaws.com.cn",
    "aws-us-gov": "amazonaws.com",
}


class PartitionError(ValueError):
    """A region name that is malformed or belongs to a partition this project does not serve."""


def partition_of(region: str) -> str:
    """Return `aws`, `aws-cn` or `aws-us-gov` for REGION.

    Raises PartitionError for a malformed name and for the isolated partitions (`us-iso-*`,
    `us-isob-*`, `eu-isoe-*`), which have no public NLB documentation to test against.
    """
    # fullmatch: `$` alone would let a trailing newline through.
    if not isinstance(region, str) or not REGION_PATTERN.fullmatch(region):
        raise PartitionError(
            f"region {region!r} is not a region name; expected e.g. eu-west-1, cn-north-1, "
            "us-gov-west-1"
        )
    if "-iso" in region:
        raise PartitionError(
            f"region {region!r} is in an isolated partition; accepted: regions of the aws, "
            "aws-cn and aws-us-gov partitions, e.g. eu-west-1, cn-north-1, us-gov-west-1"
        )
    for prefix, partition in _PARTITIONS:
        if region.startswith(prefix):
            return partition
    return "aws"


def dns_suffix(region: str) -> str:
    """The service domain suffix of REGION's partition (`amazonaws.com.cn` in China)."""
    return _DNS_SUFFIXES[partition_of(region)]
