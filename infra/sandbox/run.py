"""The sandbox: a moto server, the stack built on it and the data plane serving it, one process."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import boto3
import uvloop

from infra.aws import Clients
from infra.keystore import KeyStore
from infra.provision import build
from infra.stack import Stack
from infra.state import StateFileError, read_state, run_directory
from infra.teardown import TeardownReport, TeardownSettings, teardown
from infra.validation import validate
from infra.waits import Waits

from .certificates import CertificateSource
from .config import ConfigReader, ConfigWatcher, LoadBalancerConfig
from .control_plane import ControlPlaneServer
from .dataplane import DataPlane, TlsBuilder
from .health import DEFAULT_TIME_SCALE, HealthChecker, HealthTable
from .local_compute import LocalCompute
from .log_delivery import LogDelivery
from .proxy import HANDSHAKE_TIMEOUT_SECONDS
from .routing import FLOW_HASH, TargetSelector
from .tls import IDLE_TIMEOUT_SECONDS

__all__ = ["Sandbox", "SandboxOptions", "SandboxStartError"]

logger = logging.getLogger(__name__)

# Against the sandbox everything answers in milliseconds; these keep the build's waits short
# and still give a broken backend a clear deadline.
_WAITS = Waits(load_balancer_s=30.0, targets_s=30.0, instances_s=30.0, poll_s=0.1)
_TEARDOWN = TeardownSettings(retry_deadline_s=10.0, wait_deadline_s=10.0, poll_s=0.1)
_FAKE_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class SandboxStartError(RuntimeError):
    """The sandbox could not come up; the message says which step failed."""


@dataclass(frozen=True)
class SandboxOptions:
    """How the sandbox runs.

    `log_interval` is the access-log delivery interval (300 s as on AWS by default);
    `health_time_scale` multiplies the target groups' health-check intervals and timeouts.
    """

    state_file: Path
    log_interval: float = 300.0
    listen_address: str = "127.0.0.1"
    listener_ports_as_is: bool = False
    health_time_scale: float = DEFAULT_TIME_SCALE
    target_selection: str = FLOW_HASH
    watch_interval: float = 5.0
    handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS
    idle_timeout: float = IDLE_TIMEOUT_SECONDS


class _Loop:
    """An asyncio event loop running in a thread of its own.

    The loop is uvloop's: it runs the same protocols, with the transports, callbacks and
    polling in C (libuv) instead of Python, which takes about a tenth off the data plane's
    CPU per connection (python -m bench.dataplane_vs_haproxy).
    """

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="data-plane",
                                        daemon=True)
        self._thread.start()

    def run(self, coroutine, timeout: float = 30.0):
        """Run a coroutine in the loop from another thread and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class Sandbox:
    """The local target: `start()` brings it up and returns the state, `stop()` ends it.

    start: a moto server on 127.0.0.1 (a free port), moto's ELBv2 model patched to report
    the sandbox's health checks, the data plane and its configuration watcher running, then
    the stack built with the provisioning code (LocalCompute for the targets), which waits
    for healthy targets; finally the state file gets each listener's loopback `address`.
    stop: the data plane ends every open connection (each gets its access-log entry), the
    log delivery flushes, the stack is torn down, the state file removed, moto stopped.
    `stop_traffic()` and `teardown()` are the two halves of stop, for tests that inspect
    the logs in between.
    """

    def __init__(self, stack: Stack, options: SandboxOptions) -> None:
        self.stack = stack
        self.options = replace(options, state_file=Path(options.state_file).absolute())
        self.compute = LocalCompute("127.0.0.1")
        self.health_table = HealthTable()
        self.state: Optional[dict] = None
        self.endpoint_url = ""
        self.plane: Optional[DataPlane] = None
        self.delivery: Optional[LogDelivery] = None
        self.watcher: Optional[ConfigWatcher] = None
        self.started_in = 0.0
        self._server = None
        self._uninstall = None
        self._loop: Optional[_Loop] = None
        self._traffic_stopped = self._torn_down = False
        self._session = None
        self._clients: Optional[Clients] = None

    def clients(self, *services: str) -> Clients:
        """A new set of clients for the sandbox's endpoint, with fake credentials; `services`
        are created at once.

        The sets share one boto3 session, so each service's model is loaded once (the EC2
        one takes a noticeable part of a second). Creating clients from one session is not
        safe from several threads at once, so the threads' sets are made in the thread that
        calls start(), before the threads run.
        """
        if self._session is None:
            self._session = boto3.session.Session(**_FAKE_CREDENTIALS)
        clients = Clients(self.stack.region, self.endpoint_url, session=self._session)
        for service in services:
            clients.client(service)
        return clients

    def start(self) -> dict:
        """Bring the sandbox up; returns the state as written to the state file.

        Raises StackConfigError for a bad choice and StateFileError for a state file that
        already lists another run's resources, both before anything is started.
        """
        started = time.monotonic()
        validate(self.stack)
        _refuse_a_used_state_file(self.options.state_file)
        try:
            self.compute.launch(self.stack, self.options.state_file)
            self._server = ControlPlaneServer().start()
            self.endpoint_url = self._server.url
            from . import moto_patch  # imports moto's ELBv2 and EC2 models: a second or two

            self._uninstall = moto_patch.install(self.health_table)
            self._clients = self.clients("sts", "s3", "acm", "ec2", "elbv2")
            self._start_data_plane()
            self.state = build(self.stack, self._clients, self.compute, self.options.state_file,
                               target="local", waits=_WAITS, on_step=self._on_step)
        except BaseException:
            self.stop()
            raise
        self.watcher.interval = self.options.watch_interval
        self.started_in = time.monotonic() - started
        logger.info("sandbox up in %.1f s", self.started_in)
        return self.state

    def _start_data_plane(self) -> None:
        account = self._clients.account_id()
        region = self.stack.region
        self._loop = _Loop()
        health = HealthChecker(self.health_table, time_scale=self.options.health_time_scale)
        selector = TargetSelector(
            lambda group_arn, target: health.is_healthy(group_arn, target.id, target.port),
            self.options.target_selection,
        )
        self.delivery = LogDelivery(self.clients("s3").s3, account, region,
                                    self.options.log_interval)
        self.delivery.start()
        self.plane = DataPlane(selector, health, self.delivery.record,
                               host=self.options.listen_address,
                               listener_ports_as_is=self.options.listener_ports_as_is,
                               handshake_timeout=self.options.handshake_timeout,
                               idle_timeout=self.options.idle_timeout)
        watch_clients = self.clients("elbv2", "acm")
        keystore = KeyStore(run_directory(self.options.state_file) / "keys")
        source = CertificateSource(watch_clients.acm, account, region,
                                   keystore.key_for_certificate)
        self._tls_builder = TlsBuilder(source)
        reader = ConfigReader(watch_clients.elbv2, watch_clients.acm, self.stack.name)
        # Poll fast while the stack is being built, so the listeners' health checks start
        # as soon as the listeners exist; `watch_interval` once it is up.
        self.watcher = ConfigWatcher(reader, self._apply, interval=0.1)
        self._server.notify_to(self.watcher.notify)
        self.watcher.start()

    def _apply(self, config: LoadBalancerConfig) -> None:
        tls = self._tls_builder.build(config)
        self._loop.run(self.plane.apply(config, tls))

    def _on_step(self, name: str) -> None:
        # Before the last step the listeners exist: once the data plane serves them, their
        # loopback addresses go into the state, so the file never says `ready` without them.
        if name == "wait-targets":
            state = self.compute.ledger.state
            self._wait_until_served(state, deadline=time.monotonic() + 10.0)
            self.compute.ledger.update(**self._served_fields(state))

    def _wait_until_served(self, state: dict, deadline: float) -> None:
        wanted = {item["arn"] for item in state["listeners"] if item["protocol"] == "TLS"}
        logs_on = bool(state.get("access_logs"))
        while time.monotonic() < deadline:
            current = self.watcher.current
            served = set(self.plane.addresses())
            if current is not None and wanted <= served \
                    and current.access_logs.enabled == logs_on:
                return
            time.sleep(0.05)
        raise SandboxStartError(
            f"the data plane did not serve listeners {sorted(wanted - set(self.plane.addresses()))}"
            " within 10 s of the build; see the warnings above"
        )

    def _served_fields(self, state: dict) -> dict:
        addresses = self.plane.addresses()
        listeners = []
        for listener in state["listeners"]:
            host, port = addresses.get(listener["arn"], (None, None))
            listeners.append({**listener, "address": {"host": host, "port": port}})
        backends = [
            {"target_group": b.group_key, "index": b.index, "host": b.host, "port": b.port,
             "pid": b.pid, "log_file": str(b.log_file)}
            for b in self.compute.backends.values()
        ]
        sandbox = {"pid": os.getpid(), "log_interval_s": self.options.log_interval,
                   "health_time_scale": self.options.health_time_scale}
        return {"listeners": listeners, "backends": backends, "sandbox": sandbox}

    def stop_traffic(self) -> None:
        """Stop watching and serving; every connection's entry is flushed to S3."""
        if self._traffic_stopped:
            return
        self._traffic_stopped = True
        if self.watcher is not None:
            self.watcher.stop()
        if self.plane is not None:
            self._loop.run(self.plane.stop())
        if self.delivery is not None:
            written = self.delivery.stop()
            logger.info("flushed access logs: %d objects", len(written))

    def teardown(self) -> Optional[TeardownReport]:
        """Tear the stack down, remove the state file, stop moto; idempotent."""
        if self._torn_down:
            return None
        self._torn_down = True
        report = None
        state = self.state or _read_partial_state(self.options.state_file, self.stack.run_id)
        try:
            if state is not None and self._clients is not None:
                report = teardown(state, self._clients, settings=_TEARDOWN, compute=self.compute)
                for leftover in report.left:
                    logger.warning("left after teardown: %s %s: %s", *leftover.__dict__.values())
        finally:
            self.compute.stop_all()
            self.compute.remove_logs()
            self.options.state_file.unlink(missing_ok=True)
            if self._loop is not None:
                self._loop.close()
            if self._uninstall is not None:
                self._uninstall()
            if self._server is not None:
                self._server.stop()
        return report

    def stop(self) -> Optional[TeardownReport]:
        """stop_traffic(), then teardown() even when stopping the traffic failed."""
        try:
            self.stop_traffic()
        except Exception:  # teardown must still run; the traceback says what went wrong
            logger.exception("stopping the data plane failed; tearing down anyway")
        return self.teardown()


def _read_partial_state(path: Path, run_id: str) -> Optional[dict]:
    """The ledger a build of this run interrupted part-way left in the state file, if any;
    never another run's, whatever the file holds."""
    try:
        state = read_state(path)
    except StateFileError:  # no file, or not written yet: nothing was created
        return None
    return state if state.get("run_id") == run_id else None


def _refuse_a_used_state_file(path: Path) -> None:
    # Another run's ledger must survive: its resources may still be up (elsewhere, or in a
    # sandbox that is running), and the file is how they are torn down.
    try:
        previous = read_state(path)
    except StateFileError:
        return  # no state file there, or not one of ours: the build writes it afresh
    if previous["resources"]:
        raise StateFileError(
            f"state file {path} already lists {len(previous['resources'])} resources of run "
            f"{previous['run_id']} (target {previous.get('target')}); tear them down with "
            f"`python -m infra down --state-file {path}`, or, for a sandbox that was killed "
            "(its moto server is gone with it), delete the file and its .d directory; or "
            "give another --state-file"
        )
