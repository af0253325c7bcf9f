"""The S3 bucket policy that lets the NLB log-delivery service write, and an evaluator for it."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from infra.partitions import partition_of

__all__ = [
    "DELIVERY_PRINCIPAL",
    "delivery_policy",
    "allows_delivery",
    "log_key_prefix",
    "source_arn",
]

# NLB access logs are written by the log-delivery service, never by the per-region ELB
# accounts (those belong to ALB and Classic load balancers).
DELIVERY_PRINCIPAL = "delivery.logs.amazonaws.com"
DELIVERY_ACL = "bucket-owner-full-control"


def log_key_prefix(prefix: str, account_id: str) -> str:
    """`PREFIX/AWSLogs/ACCOUNT/` (no leading segment when the prefix is empty)."""
    return f"{prefix}/AWSLogs/{account_id}/" if prefix else f"AWSLogs/{account_id}/"


def source_arn(account_id: str, region: str) -> str:
    """The `aws:SourceArn` pattern the documentation gives for log delivery in REGION."""
    return f"arn:{partition_of(region)}:logs:{region}:{account_id}:*"


def delivery_policy(bucket: str, prefix: str, account_id: str, region: str) -> dict:
    """The bucket policy NLB access-log delivery needs, built for REGION's partition.

    Two Allow statements for the delivery service: GetBucketAcl on the bucket, and PutObject
    under `PREFIX/AWSLogs/ACCOUNT/*` with the `bucket-owner-full-control` ACL; both limited by
    `aws:SourceAccount` and `aws:SourceArn` so no other account's deliveries can write here.
    There is deliberately no Deny statement: moto applies a Deny without its conditions and
    would then refuse every object call.
    """
    partition = partition_of(region)
    conditions = {
        "StringEquals": {"aws:SourceAccount": [account_id]},
        "ArnLike": {"aws:SourceArn": [source_arn(account_id, region)]},
    }
    principal = {"Service": DELIVERY_PRINCIPAL}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AWSLogDeliveryAclCheck",
                "Effect": "Allow",
                "Principal": principal,
                "Action": "s3:GetBucketAcl",
                "Resource": f"arn:{partition}:s3:::{bucket}",
                "Condition": conditions,
            },
            {
                "Sid": "AWSLogDeliveryWrite",
                "Effect": "Allow",
                "Principal": principal,
                "Action": "s3:PutObject",
                "Resource": f"arn:{partition}:s3:::{bucket}/{log_key_prefix(prefix, account_id)}*",
                "Condition": {
                    "StringEquals": {
                        "s3:x-amz-acl": DELIVERY_ACL,
                        **conditions["StringEquals"],
                    },
                    "ArnLike": conditions["ArnLike"],
                },
            },
        ],
    }


def allows_delivery(
    policy: dict | str | None, bucket: str, key: str, account_id: str, region: str
) -> bool:
    """Whether POLICY lets the delivery service put object KEY into BUCKET, as AWS decides.

    The request evaluated is the one log delivery makes: principal `delivery.logs.amazonaws.com`,
    action `s3:PutObject`, the object's ARN, and the context keys `s3:x-amz-acl`
    (bucket-owner-full-control), `aws:SourceAccount` and `aws:SourceArn`. The service does not
    publish the exact source ARN it sends, only the pattern `arn:P:logs:REGION:ACCOUNT:*`, so
    that pattern is the value conditions are matched against. A matching Deny wins; otherwise a
    matching Allow is needed. No policy, or one that is not JSON, allows nothing.
    """
    document = _parse(policy)
    if document is None:
        return False
    request = {
        "action": "s3:PutObject",
        "resource": f"arn:{partition_of(region)}:s3:::{bucket}/{key}",
        "context": {
            "s3:x-amz-acl": DELIVERY_ACL,
            "aws:sourceaccount": account_id,
            "aws:sourcearn": source_arn(account_id, region),
        },
    }
    statements = document.get("Statement", [])
    if isinstance(statements, Mapping):
        statements = [statements]
    applying = [s for s in statements if isinstance(s, Mapping) and _applies(s, request)]
    if any(s.get("Effect") == "Deny" for s in applying):
        return False
    return any(s.get("Effect") == "Allow" for s in applying)


def _parse(policy) -> dict | None:
    if policy is None:
        return None
    if isinstance(policy, (str, bytes)):
        try:
            policy = json.loads(policy)
        except ValueError:
            return None
    return policy if isinstance(policy, Mapping) else None


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _applies(statement: Mapping, request: Mapping) -> bool:
    """Principal, action, resource and every condition of STATEMENT match REQUEST."""
    if "NotPrincipal" in statement or not _principal_matches(statement.get("Principal")):
        return False
    if not _element_matches(statement, "Action", request["action"], ignore_case=True):
        return False
    if not _element_matches(statement, "Resource", request["resource"], ignore_case=False):
        return False
    return _conditions_match(statement.get("Condition", {}), request["context"])


def _principal_matches(principal) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, Mapping):
        return False
    services = _as_list(principal.get("Service"))
    anyone = _as_list(principal.get("AWS"))
    return DELIVERY_PRINCIPAL in services or "*" in anyone


def _element_matches(statement: Mapping, name: str, value: str, *, ignore_case: bool) -> bool:
    """`Action`/`NotAction` (or `Resource`/`NotResource`) with IAM wildcards `*` and `?`."""
    if name in statement:
        return any(_glob(p, value, ignore_case) for p in _as_list(statement[name]))
    if f"Not{name}" in statement:
        return not any(_glob(p, value, ignore_case) for p in _as_list(statement[f"Not{name}"]))
    return False


def _glob(pattern, value: str, ignore_case: bool) -> bool:
    if not isinstance(pattern, str):
        return False
    regex = "".join(
        ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern
    )
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def _arn_like(pattern, value: str) -> bool:
    """ArnLike compares the six colon-separated parts one by one, each with wildcards."""
    if not isinstance(pattern, str):
        return False
    want, got = pattern.split(":", 5), value.split(":", 5)
    if len(want) != 6 or len(got) != 6:
        return False
    return all(_glob(w, g, ignore_case=False) for w, g in zip(want, got))


_OPERATORS = {
    "StringEquals": lambda p, v: p == v,
    "StringNotEquals": lambda p, v: p != v,
    "StringEqualsIgnoreCase": lambda p, v: isinstance(p, str) and p.lower() == v.lower(),
    "StringLike": lambda p, v: _glob(p, v, ignore_case=False),
    "StringNotLike": lambda p, v: not _glob(p, v, ignore_case=False),
    "ArnEquals": lambda p, v: p == v,
    "ArnLike": _arn_like,
    "ArnNotEquals": lambda p, v: p != v,
    "ArnNotLike": lambda p, v: not _arn_like(p, v),
}
_NEGATED = {"StringNotEquals", "StringNotLike", "ArnNotEquals", "ArnNotLike"}


def _conditions_match(conditions, context: Mapping[str, str]) -> bool:
    """Every operator block and every key in it must hold (keys are case-insensitive).

    A positive operator holds when any listed value matches; a negated one when none does
    (`StringNotEquals` with two values means "neither"). An operator this evaluator does not
    know makes the statement not apply, so an unrecognised condition never grants access.
    """
    if not isinstance(conditions, Mapping):
        return False
    for operator, block in conditions.items():
        test = _OPERATORS.get(operator)
        if test is None or not isinstance(block, Mapping):
            return False
        for key, patterns in block.items():
            value = context.get(key.lower())
            if value is None:
                # An absent key fails a positive test and passes a negated one, as in IAM.
                if operator in _NEGATED:
                    continue
                return False
            patterns = _as_list(patterns)
            if operator in _NEGATED:
                if not all(test(p, value) for p in patterns):
                    return False
            elif not any(test(p, value) for p in patterns):
                return False
    return True
