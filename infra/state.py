"""The state file of a stack (JSON, written atomically) and the ledger of created resources."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import tempfile
from pathlib import Path

from infra.aws import EndpointUrlError, check_endpoint_url
from infra.partitions import PartitionError, partition_of

__all__ = [
    "STATE_VERSION",
    "StateFileError",
    "Ledger",
    "new_state",
    "read_state",
    "write_state",
    "run_directory",
    "check_state_path",
]

log = logging.getLogger(__name__)

STATE_VERSION = 1

# A state file lists a few dozen resources in a few kilobytes; anything past this bound is not
# one, and reading it whole (a device, a runaway file) would only exhaust memory.
_MAX_STATE_BYTES = 16 * 1024 * 1024
_ACCOUNT_ID = re.compile(r"[0-9]{12}")


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
    """Read a state file and check the fields teardown trusts; raises StateFileError naming
    the path, the field and what is accepted.

    Checked: `run_id` (a non-empty string), `region` (a region name), `resources` (a list of
    objects with string `type` and `id`), and when present `endpoint_url` (an http or https
    URL, or null), `account_id` (12 digits, or null) and `keep_logs` (true or false).
    """
    path = Path(path)
    text = _read_text(path)
    try:
        state = json.loads(text)
    except RecursionError:
        # json.loads recurses once per nesting level; no state file nests more than three.
        raise StateFileError(f"state file {path} nests JSON too deeply to be a state file "
                             "(accepted: a file written by `python -m infra up`)") from None
    except ValueError as exc:
        raise StateFileError(f"state file {path} is not JSON: {exc}") from None
    problem = _schema_problem(state)
    if problem:
        raise StateFileError(f"state file {path} is not a stack state file: {problem}")
    return state


def _read_text(path: Path) -> str:
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            os.close(descriptor)
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise StateFileError(f"state file {path} is {kind}; accepted the file "
                                 "`python -m infra up --state-file` wrote")
        with os.fdopen(descriptor, "rb") as handle:
            data = handle.read(_MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        raise StateFileError(f"state file {path} does not exist") from None
    except OSError as error:
        raise StateFileError(f"cannot read state file {path}: {error.strerror}") from None
    if len(data) > _MAX_STATE_BYTES:
        raise StateFileError(f"state file {path} is larger than {_MAX_STATE_BYTES} bytes; "
                             "no state file is")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise StateFileError(f"state file {path} is not UTF-8 text: {error}") from None


def _schema_problem(state) -> str | None:
    """What is wrong with the fields of STATE that teardown relies on, or None."""
    if not isinstance(state, dict):
        return f"the top level is {_json_type(state)}; accepted an object"
    missing = [k for k in ("run_id", "region", "resources") if k not in state]
    if missing:
        return f"missing {', '.join(missing)}"
    if not isinstance(state["run_id"], str) or not state["run_id"]:
        return f"run_id is {state['run_id']!r}; accepted a non-empty string"
    try:
        partition_of(state["region"])
    except PartitionError as error:
        return str(error)
    if state.get("endpoint_url") is not None:
        try:
            check_endpoint_url(state["endpoint_url"])
        except EndpointUrlError as error:
            return str(error)
    account = state.get("account_id")
    if account is not None and not (isinstance(account, str) and _ACCOUNT_ID.fullmatch(account)):
        return f"account_id is {account!r}; accepted a 12-digit string or null"
    if "keep_logs" in state and not isinstance(state["keep_logs"], bool):
        return f"keep_logs is {state['keep_logs']!r}; accepted true or false"
    return _resources_problem(state["resources"])


def _resources_problem(resources) -> str | None:
    if not isinstance(resources, list):
        return f"resources is {_json_type(resources)}; accepted a list of objects"
    for index, entry in enumerate(resources):
        where = f"resources[{index}]"
        if not isinstance(entry, dict):
            return f"{where} is {_json_type(entry)}; accepted an object with type and id"
        for key in ("type", "id"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                return f"{where}.{key} is {entry.get(key)!r}; accepted a non-empty string"
        # Detaching a gateway names the VPC it is attached to.
        if entry["type"] == "ec2-internet-gateway-attachment" and not (
                isinstance(entry.get("vpc_id"), str) and entry["vpc_id"]):
            return f"{where}.vpc_id is {entry.get('vpc_id')!r}; accepted a VPC id"
    return None


def _json_type(value) -> str:
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number",
             type(None): "null"}
    return f"{names[type(value)]} ({json.dumps(value)[:40]})"


def check_state_path(path: str | os.PathLike) -> Path:
    """PATH made absolute, when a state file can be written there; raises StateFileError
    naming the path and what is accepted otherwise.

    Accepted: an existing regular file, or a new name, in a directory that exists and is
    writable. A missing directory is refused rather than created: it is more often a typing
    mistake than a wish. The run directory `PATH.d` must be a directory when it exists.
    """
    path = Path(path).absolute()
    accepted = "accepted a file name in an existing, writable directory"
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise StateFileError(f"state file {path} is {kind}; {accepted}")
    directory = path.parent
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise StateFileError(f"state file {path}: {directory} {what}; {accepted}")
    # The file is written by a rename within its directory, which needs write and search
    # permission there (and a file system that is not read-only, which access() reports).
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StateFileError(f"state file {path}: directory {directory} is not writable; "
                             f"{accepted}")
    own = run_directory(path)
    if own.exists() and not own.is_dir():
        raise StateFileError(f"state file {path}: {own}, where the run keeps its generated "
                             "keys, exists and is not a directory; remove it or give another "
                             "--state-file")
    return path


def _refuse_unless_clearly_empty(path: Path, error: StateFileError) -> None:
    """Let `Ledger.start` replace a file that is not a valid state file only when it plainly
    lists no resources: any other file may be the only record of a stack still up."""
    try:
        content = json.loads(_read_text(path))
    except (StateFileError, RecursionError):
        raise StateFileError(f"{error}; refusing to replace it") from None
    except ValueError:
        return  # not JSON at all (an empty or truncated file): nothing it could list
    if isinstance(content, dict) and content.get("resources"):
        raise StateFileError(f"{error}; it may still list resources, so it is not replaced: "
                             "fix it and tear them down, or remove it") from None


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
        path = check_state_path(path)
        if path.exists():
            try:
                previous = read_state(path)
            except StateFileError as error:
                _refuse_unless_clearly_empty(path, error)
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
