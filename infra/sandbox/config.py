"""The load balancer's configuration as the data plane serves it, read through the APIs."""

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .health import DRAINING, HealthCheckSettings

__all__ = [
    "AccessLogSettings",
    "CertificateVersion",
    "ConfigReader",
    "ConfigWatcher",
    "Listener",
    "LoadBalancerConfig",
    "Target",
    "TargetGroup",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """A registered target: an IP address (or instance id) and the port traffic goes to."""

    id: str
    port: int


@dataclass(frozen=True)
class TargetGroup:
    """A target group: protocol and port, health check, registered targets in API order."""

    arn: str
    name: str
    protocol: str
    port: int
    health_check: HealthCheckSettings
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class Listener:
    """A listener; `certificate_arns` is its certificate list without the default one."""

    arn: str
    port: int
    protocol: str
    ssl_policy: Optional[str]
    alpn_policy: Optional[str]
    default_certificate_arn: Optional[str]
    certificate_arns: tuple[str, ...]
    target_group_arn: Optional[str]

    @property
    def id(self) -> str:
        """The listener id, the last segment of its ARN (the access log's listener field)."""
        return self.arn.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class AccessLogSettings:
    """The load balancer's `access_logs.s3.*` attributes."""

    enabled: bool
    bucket: str
    prefix: str


@dataclass(frozen=True)
class CertificateVersion:
    """What ACM says of a certificate a listener names; `serial` None when it is gone.

    The serial changes when a certificate is re-imported under the same ARN.
    """

    arn: str
    serial: Optional[str]


@dataclass(frozen=True)
class LoadBalancerConfig:
    """Everything the data plane serves for one load balancer, as of one read."""

    arn: str
    name: str
    dns_name: str
    listeners: tuple[Listener, ...]
    target_groups: tuple[TargetGroup, ...]
    access_logs: AccessLogSettings
    certificates: tuple[CertificateVersion, ...]

    @property
    def id(self) -> str:
        """The load balancer id, the last segment of its ARN."""
        return self.arn.rsplit("/", 1)[-1]

    def target_group(self, arn: Optional[str]) -> Optional[TargetGroup]:
        """The target group with `arn`, or None."""
        return next((group for group in self.target_groups if group.arn == arn), None)

    def groups_in_use(self) -> set:
        """ARNs of the target groups some listener forwards to."""
        return {listener.target_group_arn for listener in self.listeners} - {None}


def _forward_target(listener: dict) -> Optional[str]:
    for action in listener.get("DefaultActions", []):
        if action.get("Type") != "forward":
            continue
        if action.get("TargetGroupArn"):
            return action["TargetGroupArn"]
        groups = action.get("ForwardConfig", {}).get("TargetGroups", [])
        if groups:
            return groups[0]["TargetGroupArn"]
    return None


def _health_check(group: dict) -> HealthCheckSettings:
    matcher = group.get("Matcher", {}).get("HttpCode") or "200-399"
    return HealthCheckSettings(
        protocol=group.get("HealthCheckProtocol") or "TCP",
        port=str(group.get("HealthCheckPort") or "traffic-port"),
        path=group.get("HealthCheckPath"),
        interval_seconds=int(group.get("HealthCheckIntervalSeconds", 30)),
        timeout_seconds=int(group.get("HealthCheckTimeoutSeconds", 10)),
        healthy_threshold=int(group.get("HealthyThresholdCount", 5)),
        unhealthy_threshold=int(group.get("UnhealthyThresholdCount", 2)),
        matcher=matcher,
        enabled=bool(group.get("HealthCheckEnabled", True)),
    )


class ConfigReader:
    """Reads one load balancer's configuration with ELBv2 and ACM describe calls.

    The load balancer is named, not given by ARN, so that the reader can watch a stack that
    is still being built: until the load balancer exists, `read()` returns None.
    """

    def __init__(self, elbv2_client, acm_client, load_balancer_name: str) -> None:
        self._elbv2 = elbv2_client
        self._acm = acm_client
        self._name = load_balancer_name
        self._arn = ""

    def _balancer(self) -> Optional[dict]:
        try:
            described = self._elbv2.describe_load_balancers(Names=[self._name])
        except self._elbv2.exceptions.LoadBalancerNotFoundException:
            return None
        balancers = described["LoadBalancers"]
        return balancers[0] if balancers else None

    def read(self) -> Optional[LoadBalancerConfig]:
        """One read of everything, None while the load balancer does not exist; raises
        botocore errors as they come."""
        balancer = self._balancer()
        if balancer is None:
            return None
        self._arn = balancer["LoadBalancerArn"]
        listeners = tuple(self._listeners())
        groups = self._elbv2.describe_target_groups(LoadBalancerArn=self._arn)["TargetGroups"]
        certificate_arns = sorted(
            {arn for listener in listeners for arn in self._all_certificates(listener)}
        )
        return LoadBalancerConfig(
            arn=self._arn,
            name=balancer["LoadBalancerName"],
            dns_name=balancer.get("DNSName", ""),
            listeners=listeners,
            target_groups=tuple(self._target_group(group) for group in groups),
            access_logs=self._access_logs(),
            certificates=tuple(self._certificate(arn) for arn in certificate_arns),
        )

    @staticmethod
    def _all_certificates(listener: Listener) -> tuple[str, ...]:
        default = (listener.default_certificate_arn,) if listener.default_certificate_arn else ()
        return default + listener.certificate_arns

    def _listeners(self):
        paginator = self._elbv2.get_paginator("describe_listeners")
        for page in paginator.paginate(LoadBalancerArn=self._arn):
            for listener in sorted(page["Listeners"], key=lambda item: item["Port"]):
                yield self._listener(listener)

    def _listener(self, listener: dict) -> Listener:
        default = next(iter(listener.get("Certificates") or []), {}).get("CertificateArn")
        listed: tuple[str, ...] = ()
        if listener["Protocol"] == "TLS":
            answer = self._elbv2.describe_listener_certificates(ListenerArn=listener["ListenerArn"])
            listed = tuple(
                cert["CertificateArn"] for cert in answer["Certificates"]
                if not cert.get("IsDefault") and cert["CertificateArn"] != default
            )
        alpn = (listener.get("AlpnPolicy") or [None])[0]
        return Listener(
            arn=listener["ListenerArn"],
            port=int(listener["Port"]),
            protocol=listener["Protocol"],
            ssl_policy=listener.get("SslPolicy"),
            alpn_policy=alpn,
            default_certificate_arn=default,
            certificate_arns=listed,
            target_group_arn=_forward_target(listener),
        )

    def _target_group(self, group: dict) -> TargetGroup:
        answer = self._elbv2.describe_target_health(TargetGroupArn=group["TargetGroupArn"])
        targets = tuple(
            Target(item["Target"]["Id"], int(item["Target"].get("Port") or group["Port"]))
            for item in answer["TargetHealthDescriptions"]
            if item.get("TargetHealth", {}).get("State") != DRAINING
        )
        return TargetGroup(
            arn=group["TargetGroupArn"],
            name=group["TargetGroupName"],
            protocol=group["Protocol"],
            port=int(group["Port"]),
            health_check=_health_check(group),
            targets=targets,
        )

    def _access_logs(self) -> AccessLogSettings:
        answer = self._elbv2.describe_load_balancer_attributes(LoadBalancerArn=self._arn)
        values = {item["Key"]: item["Value"] for item in answer["Attributes"]}
        return AccessLogSettings(
            enabled=values.get("access_logs.s3.enabled", "false").lower() == "true",
            bucket=values.get("access_logs.s3.bucket", ""),
            prefix=values.get("access_logs.s3.prefix", ""),
        )

    def _certificate(self, arn: str) -> CertificateVersion:
        try:
            answer = self._acm.describe_certificate(CertificateArn=arn)
        except self._acm.exceptions.ResourceNotFoundException:
            return CertificateVersion(arn, None)
        described = answer["Certificate"]
        return CertificateVersion(arn, f"{described.get('Serial')}/{described.get('ImportedAt')}")


class ConfigWatcher:
    """Polls the configuration in a thread of its own: at once after `notify()`, and at
    least every `interval` seconds.

    `on_change(config)` runs in the watcher's thread for the first read and after every
    read that differs from the one before; it must hand work to the data plane's loop
    itself. A failed read is logged once per run of failures and the last config kept;
    a failed on_change is retried at the next poll. `interval` may be changed while running.
    """

    def __init__(self, reader: ConfigReader, on_change: Callable[[LoadBalancerConfig], None],
                 interval: float = 1.0) -> None:
        self._reader = reader
        self._on_change = on_change
        self.interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._failing = False
        self.current: Optional[LoadBalancerConfig] = None

    def poll(self) -> Optional[LoadBalancerConfig]:
        """Read once; calls on_change when the configuration changed, returns the current one."""
        try:
            config = self._reader.read()
        except Exception as exc:  # botocore raises many types; any read failure is the same
            if not self._failing:
                logger.warning("reading the load balancer's configuration failed: %s", exc)
            self._failing = True
            return self.current
        if self._failing:
            logger.info("reading the load balancer's configuration works again")
        self._failing = False
        if config is not None and config != self.current:
            try:
                self._on_change(config)
            except Exception:  # a bug here must not stop the watching; say it loudly
                logger.exception("applying a configuration change failed")
                return self.current
            self.current = config
        return self.current

    def start(self) -> None:
        """Start polling in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """Poll now (or right after the poll under way): something may have changed.

        Safe from any thread; the sandbox's moto server calls it after each request that
        is not a read (infra/sandbox/control_plane.py)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self._wake.clear()  # a notify() from here on polls again after this poll
            self.poll()
            self._wake.wait(max(0.0, self.interval - (time.monotonic() - started)))
            self._stop.wait(0.02)  # a burst of changes is read in one poll, not one each

    def stop(self) -> None:
        """Stop polling and wait for the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
