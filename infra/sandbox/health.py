"""Health checks of the sandbox's targets, run as each target group says, and their results."""

import asyncio
import logging
import re
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Optional

__all__ = [
    "DEFAULT_TIME_SCALE",
    "HealthCheckSettings",
    "HealthChecker",
    "HealthTable",
    "HealthTracker",
    "TargetHealth",
    "matcher_accepts",
]

logger = logging.getLogger(__name__)

INITIAL = "initial"
HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
UNUSED = "unused"
DRAINING = "draining"
UNAVAILABLE = "unavailable"

# The sandbox runs health checks this many times the target group's interval and timeout:
# a 10 s interval is checked every 0.5 s, so a fresh sandbox turns healthy within a second.
DEFAULT_TIME_SCALE = 0.05

# However fast the sandbox runs the checks, it leaves a check this long to answer, and the
# target this long between checks.
_MIN_INTERVAL = 0.2
_MIN_TIMEOUT = 1.0
_STATUS_LINE = re.compile(rb"^HTTP/\d(?:\.\d)? (\d{3})")


@dataclass(frozen=True)
class TargetHealth:
    """One target's health as describe_target_health reports it: State, Reason, Description."""

    state: str
    reason: Optional[str] = None
    description: Optional[str] = None


REGISTERING = TargetHealth(
    INITIAL, "Elb.RegistrationInProgress", "Target registration is in progress"
)
NOT_IN_USE = TargetHealth(
    UNUSED,
    "Target.NotInUse",
    "Target group is not configured to receive traffic from the load balancer",
)
DEREGISTERING = TargetHealth(
    DRAINING, "Target.DeregistrationInProgress", "Target deregistration is in progress"
)
CHECKS_DISABLED = TargetHealth(
    UNAVAILABLE, "Target.HealthCheckDisabled", "Health checks are disabled"
)


@dataclass(frozen=True)
class HealthCheckSettings:
    """A target group's health check, as describe_target_groups reports it."""

    protocol: str = "TCP"
    port: str = "traffic-port"
    path: Optional[str] = None
    interval_seconds: int = 30
    timeout_seconds: int = 10
    healthy_threshold: int = 5
    unhealthy_threshold: int = 2
    matcher: str = "200-399"
    enabled: bool = True

    def port_for(self, traffic_port: int) -> int:
        """The port the check connects to for a target serving on `traffic_port`."""
        return traffic_port if self.port == "traffic-port" else int(self.port)


def matcher_accepts(matcher: str, status: int) -> bool:
    """Whether an HTTP status satisfies a matcher such as `200-399` or `200,202`."""
    for part in matcher.split(","):
        low, _, high = part.strip().partition("-")
        if int(low) <= status <= int(high or low):
            return True
    return False


class HealthTable:
    """The measured health of every target, keyed by (target group ARN, target id, port).

    Written by the health checker in the data plane's thread, read by moto's request
    threads through the describe_target_health patch, so every access takes a lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str, int], TargetHealth] = {}

    def set(self, group_arn: str, target_id: str, port: int, health: TargetHealth) -> None:
        """Record a target's health."""
        with self._lock:
            self._entries[(group_arn, target_id, int(port))] = health

    def get(self, group_arn: str, target_id: str, port: int) -> Optional[TargetHealth]:
        """A target's recorded health, or None when the table has never seen it."""
        with self._lock:
            return self._entries.get((group_arn, target_id, int(port)))

    def remove(self, group_arn: str, target_id: str, port: int) -> None:
        """Forget a target (after its draining delay)."""
        with self._lock:
            self._entries.pop((group_arn, target_id, int(port)), None)

    def in_state(self, group_arn: str, state: str) -> list[tuple[str, int]]:
        """The (target id, port) pairs of a target group in `state`."""
        with self._lock:
            return [
                (target_id, port)
                for (arn, target_id, port), health in self._entries.items()
                if arn == group_arn and health.state == state
            ]


class HealthTracker:
    """The NLB's state machine for one target, fed one check result at a time.

    A target starts `initial`; `healthy_threshold` consecutive passes make it healthy and
    `unhealthy_threshold` consecutive failures unhealthy, from either state.
    """

    def __init__(self, healthy_threshold: int, unhealthy_threshold: int) -> None:
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.health = REGISTERING
        self._passes = 0
        self._failures = 0

    def record(self, passed: bool, failure: str = "Health checks failed") -> TargetHealth:
        """Count one check result and return the target's health after it."""
        if passed:
            self._passes, self._failures = self._passes + 1, 0
            if self._passes >= self.healthy_threshold:
                self.health = TargetHealth(HEALTHY)
        else:
            self._passes, self._failures = 0, self._failures + 1
            if self._failures >= self.unhealthy_threshold:
                self.health = TargetHealth(UNHEALTHY, "Target.FailedHealthChecks", failure)
        return self.health


async def _http_status(host: str, port: int, settings: HealthCheckSettings) -> int:
    context = None
    if settings.protocol == "HTTPS":
        # Like traffic, health checks do not validate the target's certificate.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        request = (
            f"GET {settings.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "User-Agent: ELB-HealthChecker/2.0\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode())
        line = await reader.readline()
    finally:
        writer.close()
    match = _STATUS_LINE.match(line)
    if match is None:
        raise ConnectionError(f"no HTTP status line from {host}:{port}: {line[:60]!r}")
    return int(match.group(1))


async def probe(host: str, port: int, settings: HealthCheckSettings, timeout: float) -> str:
    """Run one health check; returns "" when it passes, else the failure's description."""
    try:
        if settings.protocol == "TCP":
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.close()
            return ""
        status = await asyncio.wait_for(_http_status(host, port, settings), timeout)
    except asyncio.TimeoutError:
        return "Request timed out"
    except (OSError, ssl.SSLError, ConnectionError) as exc:
        return f"Health checks failed: {type(exc).__name__}"
    if matcher_accepts(settings.matcher, status):
        return ""
    return f"Health checks failed with these codes: [{status}]"


class _TargetCheck:
    """The repeating check of one target in one target group."""

    def __init__(self, group_arn, target_id, port, settings, table, time_scale):
        self.group_arn, self.target_id, self.port = group_arn, target_id, port
        self.settings = settings
        self.table = table
        self.time_scale = time_scale
        self.tracker = HealthTracker(settings.healthy_threshold, settings.unhealthy_threshold)
        self.task: Optional[asyncio.Task] = None

    def start(self) -> None:
        if not self.settings.enabled:
            self.table.set(self.group_arn, self.target_id, self.port, CHECKS_DISABLED)
            return
        self.table.set(self.group_arn, self.target_id, self.port, self.tracker.health)
        self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        interval = max(_MIN_INTERVAL, self.settings.interval_seconds * self.time_scale)
        timeout = max(_MIN_TIMEOUT, self.settings.timeout_seconds * self.time_scale)
        port = self.settings.port_for(self.port)
        while True:
            started = time.monotonic()
            failure = await probe(self.target_id, port, self.settings, timeout)
            before = self.tracker.health
            health = self.tracker.record(not failure, failure)
            current = self.table.get(self.group_arn, self.target_id, self.port)
            if current is not None and current.state == DRAINING:
                # Deregistered since the last poll of the configuration (moto's deregister
                # marks it draining at once); the next apply() stops this check.
                await asyncio.sleep(interval)
                continue
            self.table.set(self.group_arn, self.target_id, self.port, health)
            if health != before:
                logger.info(
                    "target %s:%s of %s is %s%s", self.target_id, self.port,
                    self.group_arn.rsplit("/", 2)[-2], health.state,
                    f" ({health.description})" if health.reason else "",
                )
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


class HealthChecker:
    """Runs every target's health check in the running asyncio loop and fills a HealthTable.

    The sandbox runs each target group's interval and timeout times `time_scale`
    (DEFAULT_TIME_SCALE unless told; no interval under 0.2 s, no timeout under 1 s): a 10 s
    interval with threshold 2 would otherwise keep a fresh sandbox in `initial` for 10 s.
    Deregistered targets stay `draining` for `draining_seconds` instead of the group's
    deregistration delay, for the same reason.
    """

    def __init__(self, table: HealthTable, *, time_scale: float = DEFAULT_TIME_SCALE,
                 draining_seconds: float = 2.0) -> None:
        self.table = table
        self.time_scale = time_scale
        self.draining_seconds = draining_seconds
        self._checks: dict[tuple[str, str, int], _TargetCheck] = {}

    def apply(self, target_groups, groups_in_use: set) -> None:
        """Start, restart or stop checks to match the target groups now configured.

        `target_groups` are config TargetGroup objects (arn, health_check, targets);
        a group not in `groups_in_use` gets no checks and its targets show `unused`.
        """
        wanted = {}
        for group in target_groups:
            for target in group.targets:
                key = (group.arn, target.id, target.port)
                wanted[key] = group.health_check if group.arn in groups_in_use else None
        carried = {}
        for key in list(self._checks):
            if key not in wanted or wanted[key] != self._checks[key].settings:
                old = self._checks.pop(key)
                old.stop()
                carried[key] = old.tracker.health
                if key not in wanted:
                    self._drain(*key)
        for key, settings in wanted.items():
            if settings is None:
                self.table.set(*key, NOT_IN_USE)
            elif key not in self._checks:
                check = _TargetCheck(*key, settings, self.table, self.time_scale)
                # A changed health check keeps the target's state, as on the NLB.
                check.tracker.health = carried.get(key, check.tracker.health)
                self._checks[key] = check
                check.start()

    def _drain(self, group_arn: str, target_id: str, port: int) -> None:
        self.table.set(group_arn, target_id, port, DEREGISTERING)
        loop = asyncio.get_running_loop()
        loop.call_later(self.draining_seconds, self._forget, group_arn, target_id, port)

    def _forget(self, group_arn: str, target_id: str, port: int) -> None:
        if (group_arn, target_id, port) not in self._checks:
            current = self.table.get(group_arn, target_id, port)
            if current is not None and current.state == DRAINING:
                self.table.remove(group_arn, target_id, port)

    def is_healthy(self, group_arn: str, target_id: str, port: int) -> bool:
        """Whether the last measured state of a target is healthy."""
        health = self.table.get(group_arn, target_id, port)
        return health is not None and health.state == HEALTHY

    def stop(self) -> None:
        """Cancel every check."""
        for check in self._checks.values():
            check.stop()
        self._checks.clear()
