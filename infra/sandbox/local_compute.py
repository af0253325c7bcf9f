"""The sandbox's compute: backend server processes on loopback instead of EC2 instances."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.compute import Compute, Placement
from infra.state import run_directory

__all__ = ["Backend", "BackendStartError", "LocalCompute", "BACKEND_RESOURCE"]

logger = logging.getLogger(__name__)

BACKEND_RESOURCE = "local-backend-process"
_MODULES = {"TCP": "servers.http_server", "TLS": "servers.https_server"}
_LISTENING = re.compile(r"listening on \[?([0-9a-fA-F:.]+)\]?:(\d+)")
_REPO = Path(__file__).resolve().parents[2]


class BackendStartError(RuntimeError):
    """A backend process that exited or never said where it listens; names its log file."""


@dataclass(frozen=True)
class Backend:
    """One backend process: which target group it serves, where, and its log file."""

    group_key: str
    index: int
    host: str
    port: int
    pid: int
    log_file: Path
    argv: tuple[str, ...]

    @property
    def target(self) -> dict:
        """The target to register, as register_targets takes it."""
        return {"Id": self.host, "Port": self.port}


def _wait_for_port(process: subprocess.Popen, log_file: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _LISTENING.search(log_file.read_text(errors="replace"))
        if match:
            return int(match.group(2))
        if process.poll() is not None:
            raise BackendStartError(
                f"backend {' '.join(process.args)} exited with status {process.returncode}; "
                f"see {log_file}"
            )
        time.sleep(0.02)
    raise BackendStartError(f"backend {' '.join(process.args)} did not start in {timeout} s; "
                            f"see {log_file}")


class LocalCompute(Compute):
    """Two (`Stack.targets_per_group`) backend processes per target group on `host`.

    TCP target groups get `servers.http_server`, TLS ones `servers.https_server` with its
    throwaway certificate (the NLB does not validate targets). Each listens on a free port
    and is registered as an `ip` target `host:port`. The processes' output goes to log files
    in the run's directory. Targets live in the default VPC's subnets, which moto has. Each
    is started with --parent-pid of this process, so it exits when this process ends, even
    by SIGKILL.
    """

    target_type = "ip"

    def __init__(self, host: str = "127.0.0.1", startup_timeout: float = 15.0) -> None:
        self.host = host
        self.startup_timeout = startup_timeout
        self._processes: dict[tuple[str, int], subprocess.Popen] = {}
        self.backends: dict[tuple[str, int], Backend] = {}
        self._log_directory: Path | None = None
        self.ledger = None  # the build's ledger, kept so the sandbox can add what it serves
        self._launched: list = []

    def launch(self, stack, state_path) -> None:
        """Start the backend processes now, ahead of the build (they take a second to come up,
        time the sandbox spends starting moto); create_targets waits for them."""
        if self._launched:
            return
        self._log_directory = run_directory(state_path) / "backends"
        self._log_directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for group in stack.target_groups:
            for index in range(1, stack.targets_per_group + 1):
                self._launched.append(self._launch(group.key, group.protocol, index, port=0))

    def create_targets(self, stack, clients, ledger) -> Placement:
        """Start the backends (unless launched), record each in the ledger, and return the
        default VPC's subnets."""
        self.ledger = ledger
        self.launch(stack, ledger.path)
        vpc_id, subnet_ids = _default_network(clients)
        targets: dict[str, list[dict]] = {}
        for key, process, log_file in self._launched:
            backend = self._registered(key, process, log_file)
            ledger.record(BACKEND_RESOURCE, str(backend.pid), group=key[0], port=backend.port,
                          log_file=str(log_file))
            targets.setdefault(key[0], []).append(backend.target)
        return Placement(vpc_id, subnet_ids, (), self.target_type, targets)

    def _launch(self, group_key: str, protocol: str, index: int, port: int):
        module = _MODULES.get(protocol)
        if module is None:
            raise BackendStartError(f"no local backend for target group protocol {protocol!r}; "
                                    f"accepted: {', '.join(_MODULES)}")
        # --parent-pid: a sandbox killed with SIGKILL cannot stop its backends, so each
        # stops itself once this process has ended.
        argv = [sys.executable, "-m", module, "-l", self.host, "-p", str(port),
                "--parent-pid", str(os.getpid())]
        log_file = self._log_directory / f"{group_key}-{index}.log"
        with open(log_file, "wb") as output:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                cwd=_REPO, start_new_session=True,
            )
        self._processes[(group_key, index)] = process
        return (group_key, index), process, log_file

    def _registered(self, key, process: subprocess.Popen, log_file: Path) -> Backend:
        port = _wait_for_port(process, log_file, self.startup_timeout)
        backend = Backend(key[0], key[1], self.host, port, process.pid, log_file,
                          tuple(process.args))
        self.backends[key] = backend
        logger.info("backend %s-%d (pid %d) listens on %s:%d",
                    key[0], key[1], process.pid, self.host, port)
        return backend

    def stop_backend(self, group_key: str, index: int) -> Backend:
        """Stop one backend (SIGTERM, then SIGKILL after 5 s); its port stays registered."""
        backend = self.backends[(group_key, index)]
        self._terminate(self._processes[(group_key, index)])
        return backend

    def start_backend(self, group_key: str, index: int) -> Backend:
        """Start a stopped backend again on the same port."""
        backend = self.backends[(group_key, index)]
        protocol = "TLS" if backend.argv[2] == _MODULES["TLS"] else "TCP"
        key, process, log_file = self._launch(group_key, protocol, index, backend.port)
        return self._registered(key, process, log_file)

    def delete(self, resource: dict, clients) -> bool:
        """Ask a backend process recorded in the ledger to stop (SIGTERM, no wait: stop_all()
        waits for all of them at once); only processes this object started are signalled."""
        if resource["type"] != BACKEND_RESOURCE:
            return False
        for process in list(self._processes.values()):
            if str(process.pid) == resource["id"]:
                _signal(process)
        return True

    def stop_all(self) -> None:
        """Stop every backend this object started and wait for them."""
        for process in self._processes.values():
            _signal(process)
        for process in self._processes.values():
            _reap(process)

    def remove_logs(self) -> None:
        """Remove the backends' log directory, and the run directory when nothing else is in
        it (a build that failed before recording the run directory leaves it to us)."""
        if self._log_directory is None or not self._log_directory.exists():
            return
        shutil.rmtree(self._log_directory, ignore_errors=True)
        try:
            self._log_directory.parent.rmdir()
        except OSError:
            pass  # not empty: the build's own files, which teardown handles

    @staticmethod
    def _terminate(process: subprocess.Popen) -> None:
        _signal(process)
        _reap(process)


def _signal(process: subprocess.Popen) -> None:
    # poll() first: a process that already ended may have had its PID reused, and only a
    # child still running is ours to signal.
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)


def _reap(process: subprocess.Popen) -> None:
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _default_network(clients) -> tuple[str, tuple[str, ...]]:
    ec2 = clients.ec2
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise BackendStartError("the endpoint has no default VPC for the target groups")
    vpc_id = vpcs[0]["VpcId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    by_zone: dict[str, str] = {}
    for subnet in sorted(subnets, key=lambda s: s["AvailabilityZone"]):
        by_zone.setdefault(subnet["AvailabilityZone"], subnet["SubnetId"])
    return vpc_id, tuple(list(by_zone.values())[:2])
