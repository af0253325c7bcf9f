"""The state file of a stack (JSON, written atomically) and the ledger of created resources."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

__all__ = [
    "STATE_VERSION",
    "StateFileError",
    "Ledger",
    "new_state",
    "read_state",
    "write_state",
    "run_directory",
]

log = logging.getLogger(__name__)

STATE_VERSION = 1


class StateFileError(RuntimeError):
    """A state file that cannot be read, is not a state file, or would be overwritten."""


def run_directory(state_path: str | os.PathLike) -> Path:
    """The directory next to the state file for a run's generated files (`STATE.d`)."""
    state_path = Path(state_path).absolute()
    return state_path.with_name(state_path.name + ".d")


def new_state(stack, account_id: str, endpoint_url: str | None, target: str = "aws") -> dict:
    """The state of a run before anything is created: its identity and an empty ledger.

    Keys beyond the issue's schema: `state_version`, `name`, `created_at`, `tags`, `status`
    (`building`, `ready`, `failed`), `keep_logs`, `keystore`, `network`, `target_groups`,
    `sni_certificates`.
    """
    return {
        "state_version": STATE_VERSION,
        "target": target,
        "run_id": stack.run_id,
        "name": stack.name,
        "created_at": stack.created_at,
        "region": stack.region,
        "partition": stack.partition,
        "account_id": account_id,
        "endpoint_url": endpoint_url,
        "tags": stack.tags(),
        "status": "building",
        "keep_logs": stack.access_logs.keep_logs,
        "load_balancer": None,
        "certificate": None,
        "sni_certificates": [],
        "keystore": None,
        "access_logs": None,
        "network": None,
        "target_groups": [],
        "listeners": [],
        "resources": [],
    }


def write_state(path: str | os.PathLike, state: dict) -> None:
    """Write STATE to PATH atomically: a temporary file in the same directory, fsync, rename.

    A reader (or a run killed mid-write) sees either the previous file or the new one, never
    half of one. The file is created with mode 0600: it names the key files of the run.
    The directory is not fsynced: the rename survives any process death, and only a machine
    crash in the next seconds could bring back the previous version of the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_state(path: str | os.PathLike) -> dict:
    """Read a state file; raises StateFileError naming the path and what is wrong."""
    path = Path(path)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StateFileError(f"state file {path} does not exist") from None
    except ValueError as exc:
        raise StateFileError(f"state file {path} is not JSON: {exc}") from None
    missing = [k for k in ("run_id", "region", "resources") if k not in state]
    if not isinstance(state, dict) or missing:
        raise StateFileError(f"{path} is not a stack state file (missing {missing})")
    return state


class Ledger:
    """The state of a run being built, rewritten to its file after every change.

    `record()` is called the moment a create call returns, so a run killed at any point leaves
    a state file listing everything that exists; teardown walks `resources` in reverse.
    """

    def __init__(self, path: str | os.PathLike, state: dict):
        self.path = Path(path).absolute()
        self.state = state

    @classmethod
    def start(cls, path: str | os.PathLike, state: dict) -> Ledger:
        """Write the initial STATE to PATH; refuses to replace a state file that lists resources."""
        path = Path(path)
        if path.exists():
            try:
                previous = read_state(path)
            except StateFileError:
                previous = None
            if previous and previous["resources"]:
                raise StateFileError(
                    f"state file {path} still lists {len(previous['resources'])} resources of run "
                    f"{previous['run_id']}; run `python -m infra down --state-file {path}` first"
                )
        ledger = cls(path, state)
        ledger.save()
        return ledger

    def record(self, resource_type: str, resource_id: str, **details) -> dict:
        """Add a created resource (with any DETAILS teardown needs) and save at once."""
        entry = {"type": resource_type, "id": resource_id, **details}
        self.state["resources"].append(entry)
        self.save()
        log.debug("recorded %s %s", resource_type, resource_id)
        return entry

    def update(self, **fields) -> None:
        """Set top-level state FIELDS and save."""
        self.state.update(fields)
        self.save()

    def save(self) -> None:
        write_state(self.path, self.state)

    @property
    def resources(self) -> list[dict]:
        return self.state["resources"]
