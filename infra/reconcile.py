"""A state file's ledger checked against the credentials' account and completed from tags."""

# `python -m infra down` trusts a state file only this far: its resources must belong to the
# account of the credentials, and a run killed between a create call and its ledger record
# leaves resources that only the run's tag shows. Teardown itself (infra.teardown) removes
# whatever list it is given.

from __future__ import annotations

from collections.abc import Iterable

from infra.aws import Clients

__all__ = ["AccountMismatchError", "CREATION_ORDER", "check_state_account", "with_untracked"]

# The order in which the build creates resource types. Teardown walks a list newest first, so
# a list in this order removes dependents before what they depend on.
CREATION_ORDER = (
    "s3-bucket", "acm-certificate", "ec2-vpc", "ec2-internet-gateway",
    "ec2-internet-gateway-attachment", "ec2-subnet", "ec2-route-table",
    "ec2-route-table-association", "ec2-security-group", "ec2-instance",
    "elbv2-target-group", "elbv2-load-balancer", "elbv2-listener",
)


class AccountMismatchError(RuntimeError):
    """The credentials belong to another account than the one a state file was built in.

    Every resource of the state would look already gone (NotFound) from there, so teardown
    would report success and remove the state file while the stack stays up.
    """


def check_state_account(state: dict, clients: Clients) -> None:
    """Raise AccountMismatchError unless the clients' account (sts get-caller-identity) is
    the state's `account_id`. A state without one (hand-written) is not checked."""
    expected = state.get("account_id")
    if not expected:
        return
    account = clients.account_id()
    if account != expected:
        raise AccountMismatchError(
            f"state file of run {state['run_id']} lists resources of AWS account {expected}, "
            f"but the credentials are of account {account}; use credentials of account "
            f"{expected} to tear it down"
        )


def with_untracked(resources: list[dict], found: Iterable[dict]) -> tuple[list, list]:
    """RESOURCES (a ledger, creation order) with those of FOUND it does not list, each put
    after the last entry of its own or an earlier type in CREATION_ORDER, so teardown still
    removes dependents first. Returns the merged list and the entries added."""
    merged = list(resources)
    known = {(r["type"], r["id"]) for r in merged}
    added = []
    for resource in found:
        if (resource["type"], resource["id"]) in known:
            continue
        rank = _rank(resource["type"])
        position = 0
        for index, entry in enumerate(merged):
            entry_rank = _rank(entry["type"])
            if entry_rank is not None and rank is not None and entry_rank <= rank:
                position = index + 1
        merged.insert(position, resource)
        known.add((resource["type"], resource["id"]))
        added.append(resource)
    return merged, added


def _rank(resource_type: str) -> int | None:
    return CREATION_ORDER.index(resource_type) if resource_type in CREATION_ORDER else None
