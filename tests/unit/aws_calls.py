"""Record the AWS operations code performs, name the IAM actions they need, and check a policy.

Used in-process by test_iam_policy.py, and as a pytest plugin (`-p tests.unit.aws_calls`) in
the e2e subprocess it starts: with NLB_TLS_SUITE_RECORD_CALLS=FILE set, every operation that
session performs is appended to FILE as one JSON line. Only names are written (service,
operation, IAM actions) and the few request values IAM conditions test (tags, instance type,
IMDS setting), never other parameter values: ImportCertificate carries a private key.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from botocore.client import BaseClient

__all__ = ["Call", "CallRecorder", "RECORD_ENV", "iam_actions", "request_context",
           "policy_actions", "PolicyDifference", "compare", "condition_violations", "read_calls"]

RECORD_ENV = "NLB_TLS_SUITE_RECORD_CALLS"

# IAM prefixes that differ from botocore's service name.
_PREFIX = {"elbv2": "elasticloadbalancing"}

# Operations AWS authorizes with no permission at all.
_FREE = {("sts", "GetCallerIdentity")}

# S3 operations whose IAM action has another name (the S3 user guide's table of operations
# and permissions): listing is ListBucket, HEAD is the matching read, and the configuration
# calls take the older action names.
_S3_ACTIONS = {
    "ListObjects": "ListBucket",
    "ListObjectsV2": "ListBucket",
    "HeadBucket": "ListBucket",
    "ListObjectVersions": "ListBucketVersions",
    "ListBuckets": "ListAllMyBuckets",
    "HeadObject": "GetObject",
    "DeleteObjects": "DeleteObject",
    "PutBucketEncryption": "PutEncryptionConfiguration",
    "GetBucketEncryption": "GetEncryptionConfiguration",
    "DeleteBucketEncryption": "PutEncryptionConfiguration",
    "PutPublicAccessBlock": "PutBucketPublicAccessBlock",
    "GetPublicAccessBlock": "GetBucketPublicAccessBlock",
    "DeletePublicAccessBlock": "PutBucketPublicAccessBlock",
    "DeleteBucketOwnershipControls": "PutBucketOwnershipControls",
    "DeleteBucketTagging": "PutBucketTagging",
}


# Condition keys whose value the request itself decides, so a recording can evaluate them.
# Keys about existing resources (aws:ResourceTag, ec2:Owner) are not known from the request.
REQUEST_KEYS = ("ec2:InstanceType", "ec2:MetadataHttpTokens", "ec2:CreateAction",
                "elasticloadbalancing:CreateAction")


@dataclass(frozen=True)
class Call:
    """One AWS operation as performed (`ec2`, `RunInstances`), the IAM actions it needs, and
    its request context: `aws:RequestTag/KEY` for each tag it sets and REQUEST_KEYS values."""

    service: str
    operation: str
    actions: tuple[str, ...]
    context: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.service}.{self.operation}"


def _versioned(operation: str, params: Mapping) -> bool:
    if operation == "DeleteObjects":
        return any("VersionId" in o for o in params.get("Delete", {}).get("Objects", []))
    return "VersionId" in params


def _s3_actions(operation: str, params: Mapping) -> tuple[str, ...]:
    if operation in ("GetObject", "HeadObject") and _versioned(operation, params):
        return ("s3:GetObjectVersion",)
    name = _S3_ACTIONS.get(operation, operation)
    if operation in ("DeleteObject", "DeleteObjects") and _versioned(operation, params):
        # Naming a version (even "null" in an unversioned bucket) is authorized as
        # DeleteObjectVersion; DeleteObjects is checked object by object.
        return ("s3:DeleteObject", "s3:DeleteObjectVersion")
    return (f"s3:{name}",)


def iam_actions(service: str, operation: str, params: Mapping) -> tuple[str, ...]:
    """The IAM actions AWS checks for one operation with these parameters.

    Besides the action of the operation's own name: tags given at creation are authorized
    separately (EC2 `TagSpecifications` as ec2:CreateTags; ELBv2 `Tags` on a create call as
    elasticloadbalancing:AddTags; ACM `Tags` on ImportCertificate as acm:AddTagsToCertificate),
    as the service authorization reference lists for those operations.
    """
    if (service, operation) in _FREE:
        return ()
    if service == "s3":
        return _s3_actions(operation, params)
    prefix = _PREFIX.get(service, service)
    actions = [f"{prefix}:{operation}"]
    if service == "ec2" and params.get("TagSpecifications"):
        actions.append("ec2:CreateTags")
    if service == "elbv2" and operation.startswith("Create") and params.get("Tags"):
        actions.append("elasticloadbalancing:AddTags")
    if service == "acm" and operation in ("ImportCertificate", "RequestCertificate") \
            and params.get("Tags"):
        actions.append("acm:AddTagsToCertificate")
    return tuple(actions)


def _request_tags(params: Mapping) -> list[Mapping]:
    tags = list(params.get("Tags") or [])
    for specification in params.get("TagSpecifications") or []:
        tags += specification.get("Tags", [])
    return tags + list((params.get("Tagging") or {}).get("TagSet", []))


def request_context(service: str, operation: str, params: Mapping) -> tuple[tuple[str, str], ...]:
    """The condition keys this request sets, as sorted (key, value) pairs."""
    context = {f"aws:RequestTag/{t['Key']}": str(t.get("Value", ""))
               for t in _request_tags(params)}
    if service == "ec2" and params.get("TagSpecifications"):
        context["ec2:CreateAction"] = operation
    if service == "elbv2" and operation.startswith("Create") and params.get("Tags"):
        context["elasticloadbalancing:CreateAction"] = operation
    if (service, operation) == ("ec2", "RunInstances"):
        context["ec2:InstanceType"] = params.get("InstanceType", "m1.small")
        # Without MetadataOptions an instance takes the account default, not "required".
        tokens = (params.get("MetadataOptions") or {}).get("HttpTokens", "optional")
        context["ec2:MetadataHttpTokens"] = tokens
    return tuple(sorted(context.items()))


@dataclass
class CallRecorder:
    """While entered, every botocore client call in this process is recorded in `calls`.

    Patches `BaseClient._make_api_call`, the one method every client operation goes
    through, so clients made anywhere (the provisioning, the sweeper, the fixtures) are
    seen, including calls that fail. `sink`, when given, gets each call as a JSON line.
    """

    sink: Path | None = None
    calls: list[Call] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _paused: bool = False
    _original = None

    def __enter__(self) -> CallRecorder:
        original = self._original = BaseClient._make_api_call
        recorder = self

        def make_api_call(client, operation_name, api_params):
            recorder.record(client.meta.service_model.service_name, operation_name,
                            api_params)
            return original(client, operation_name, api_params)

        BaseClient._make_api_call = make_api_call
        return self

    def __exit__(self, *exc) -> None:
        BaseClient._make_api_call = self._original

    def record(self, service: str, operation: str, params: Mapping) -> None:
        if self._paused:
            return
        call = Call(service, operation, iam_actions(service, operation, params),
                    request_context(service, operation, params))
        with self._lock:
            self.calls.append(call)
            if self.sink is not None:
                with self.sink.open("a") as out:
                    out.write(json.dumps({"service": service, "operation": operation,
                                          "actions": list(call.actions),
                                          "context": call.context}) + "\n")

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Calls made inside are not recorded (a test's own setup, not the code's)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False


def read_calls(path: Path) -> list[Call]:
    """The calls a recording subprocess wrote to PATH."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Call(r["service"], r["operation"], tuple(r["actions"]),
                 tuple((key, value) for key, value in r["context"])) for r in rows]


def policy_actions(policy: Mapping) -> set[str]:
    """Every action an identity policy's Allow statements name."""
    found = set()
    for statement in policy["Statement"]:
        if statement.get("Effect") != "Allow":
            continue
        actions = statement.get("Action", [])
        found.update([actions] if isinstance(actions, str) else actions)
    return found


@dataclass(frozen=True)
class PolicyDifference:
    """`missing`: action -> operations that needed it but the policy does not allow;
    `unused`: actions the policy allows that no recorded operation needed."""

    missing: dict[str, tuple[str, ...]]
    unused: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unused

    def describe(self) -> str:
        lines = [f"not allowed: {action}, needed by {', '.join(needed_by)}"
                 for action, needed_by in sorted(self.missing.items())]
        lines += [f"allowed but never needed: {action}" for action in self.unused]
        return "\n".join(lines)


def compare(calls: Iterable[Call], policy: Mapping) -> PolicyDifference:
    """How POLICY differs from exactly the actions CALLS needed (action names compared
    case-insensitively, as IAM does)."""
    allowed = {action.lower(): action for action in policy_actions(policy)}
    needed: dict[str, set[str]] = {}
    for call in calls:
        for action in call.actions:
            needed.setdefault(action, set()).add(call.name)
    missing = {action: tuple(sorted(names)) for action, names in needed.items()
               if action.lower() not in allowed}
    used = {action.lower() for action in needed}
    unused = tuple(sorted(original for lower, original in allowed.items() if lower not in used))
    return PolicyDifference(missing, unused)


def _values(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _evaluable(key: str) -> bool:
    return key.startswith("aws:RequestTag/") or key in REQUEST_KEYS


def condition_violations(calls: Iterable[Call], policy: Mapping) -> list[str]:
    """Calls that break a request-side condition of a statement granting an action they need.

    Each statement of the policy is written so that its conditions hold for every call of
    its actions (other statements cover the call's other resource types), so every
    StringEquals/StringLike condition on a request key must be met by each such call; a
    key the call does not set fails, as IAM fails a condition on a missing key.
    """
    found = []
    calls = list(calls)
    for statement in policy["Statement"]:
        granted = {a.lower() for a in _values(statement.get("Action", []))}
        tests = [(operator, key, _values(expected))
                 for operator, pairs in statement.get("Condition", {}).items()
                 if operator in ("StringEquals", "StringLike")
                 for key, expected in pairs.items() if _evaluable(key)]
        for call in calls:
            if not granted & {a.lower() for a in call.actions}:
                continue
            context = dict(call.context)
            for operator, key, expected in tests:
                got = context.get(key)
                match = fnmatch.fnmatchcase if operator == "StringLike" else str.__eq__
                if got is None or not any(match(got, value) for value in expected):
                    found.append(f"{statement.get('Sid')}: {call.name} has {key}={got!r}, "
                                 f"the statement requires {operator} {expected}")
    return sorted(set(found))


# ---- pytest plugin side: the e2e subprocess ------------------------------------------------

_ACTIVE: list[CallRecorder] = []


def pytest_configure(config) -> None:
    sink = os.environ.get(RECORD_ENV)
    if sink and not _ACTIVE:
        _ACTIVE.append(CallRecorder(sink=Path(sink)).__enter__())


def pytest_unconfigure(config) -> None:
    while _ACTIVE:
        _ACTIVE.pop().__exit__(None, None, None)
