"""The data plane under test: `python -m infra sandbox` as a process of its own, and CPU time.

Run as its own process, the sandbox's CPU time can be read by its PID. That process also
runs the moto server (the ELBv2, ACM and S3 APIs the data plane polls and writes its access
logs to), the configuration watcher, the health checks and the log delivery: the figure is
the cost of the data plane with every NLB behaviour on, not of the proxying alone. The
backend processes it starts are separate and not counted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

__all__ = ["SandboxError", "SandboxProcess", "process_cpu_seconds"]

_REPO = Path(__file__).resolve().parent.parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_SESSION_TOKEN": "testing"}


class SandboxError(RuntimeError):
    """The sandbox did not come up; the message names its log file."""


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/PID/stat utime+stime)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    # After "pid (comm)": state is field 3, utime 14 and stime 15 (proc(5)).
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class SandboxProcess:
    """`python -m infra sandbox --state-file DIR/state.json ...`, stopped by its PID."""

    def __init__(self, directory: Path, ssl_policy: str, log_interval: float,
                 region: str = "eu-west-1") -> None:
        self.state_file = directory / "sandbox-state.json"
        self.log_file = directory / "sandbox.log"
        self._command = [
            sys.executable, "-m", "infra", "sandbox", "--state-file", str(self.state_file),
            "--ssl-policy", ssl_policy, "--log-interval", f"{log_interval:g}",
            "--region", region,
        ]
        self._process: Optional[subprocess.Popen] = None
        self.state: dict = {}

    @property
    def pid(self) -> int:
        return self._process.pid if self._process is not None else 0

    def start(self, timeout: float = 90.0) -> dict:
        """Start it and wait for the state file with every listener's address."""
        environment = {**os.environ, **_FAKE_CREDENTIALS, "AWS_DEFAULT_REGION": "eu-west-1"}
        with open(self.log_file, "wb") as output:
            self._process = subprocess.Popen(
                self._command, cwd=_REPO, env=environment, stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise SandboxError(f"the sandbox exited with status {self._process.returncode}"
                                   f"; see {self.log_file}")
            state = self._ready_state()
            if state is not None:
                self.state = state
                return state
            time.sleep(0.2)
        self.stop()
        raise SandboxError(f"the sandbox was not up within {timeout:g} s; see {self.log_file}")

    def _ready_state(self) -> Optional[dict]:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):  # not written yet, or being replaced
            return None
        listeners = state.get("listeners", [])
        served = listeners and all(item.get("address", {}).get("port") for item in listeners)
        if state.get("status") == "ready" and served and "sandbox" in state:
            return state
        return None

    def listener_address(self, port: int) -> tuple[str, int]:
        """The loopback address that serves listener `port`."""
        for listener in self.state["listeners"]:
            if listener["port"] == port:
                return listener["address"]["host"], int(listener["address"]["port"])
        raise KeyError(f"no listener on port {port}; the state has "
                       f"{[item['port'] for item in self.state['listeners']]}")

    def backends(self, group_key: str) -> tuple[tuple[str, int], ...]:
        """(host, port) of each backend of a target group ("tcp8080", "tls8443")."""
        return tuple((item["host"], int(item["port"])) for item in self.state["backends"]
                     if item["target_group"] == group_key)

    def log_objects(self) -> int:
        """How many access-log objects are in the log bucket now."""
        import boto3

        logs = self.state.get("access_logs")
        if not logs:
            return 0
        s3 = boto3.client("s3", endpoint_url=self.state["endpoint_url"],
                          region_name=self.state["region"], aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=logs["bucket"],
                                                             Prefix=logs["prefix"] + "/")
        return sum(len(page.get("Contents", [])) for page in pages)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM by PID (the sandbox flushes its logs and tears down), SIGKILL after
        `timeout`; the exit status."""
        process, self._process = self._process, None
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=10)
