"""The description of one NLB TLS stack: every choice, with defaults, as frozen dataclasses."""

from __future__ import annotations

import datetime
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from infra.partitions import partition_of

__all__ = [
    "PROJECT",
    "TAG_PROJECT",
    "TAG_RUN_ID",
    "TAG_CREATED_AT",
    "TAG_KEEP",
    "ALPN_POLICIES",
    "AL2023_AMI_PARAMETER",
    "StackConfigError",
    "HealthCheck",
    "TargetGroup",
    "Listener",
    "Certificate",
    "AccessLogs",
    "Network",
    "Stack",
    "DEFAULT_LISTENERS",
]

PROJECT = "nlb-tls-suite"
TAG_PROJECT = f"{PROJECT}:project"
TAG_RUN_ID = f"{PROJECT}:run-id"
TAG_CREATED_AT = f"{PROJECT}:created-at"
# Set on a log bucket that teardown kept on purpose, so the sweeper leaves it alone.
TAG_KEEP = f"{PROJECT}:keep"

ALPN_POLICIES = ("HTTP1Only", "HTTP2Only", "HTTP2Optional", "HTTP2Preferred", "None")
AL2023_AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


class StackConfigError(ValueError):
    """A stack choice AWS would refuse or silently mishandle; raised before anything is created.

    The message names each bad value and what is accepted (several problems, one per line).
    """


def _utc_now() -> str:
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return now.isoformat().replace("+00:00", "Z")


def _new_run_id() -> str:
    # 40 bits from the operating system's random source: unique among concurrent runs, and
    # short enough that `PREFIX-RUNID-tls8443` fits the 32-character target group name limit.
    return secrets.token_hex(5)


@dataclass(frozen=True)
class HealthCheck:
    """A target group's health check. Defaults reach healthy in about 20 s once checks start.

    `timeout_s` None means the AWS default for the protocol (10 s for TCP and HTTPS, 6 s for
    HTTP), capped at the interval, which AWS requires the timeout not to exceed. `path` and
    `matcher` apply to HTTP and HTTPS checks only.
    """

    protocol: str = "TCP"
    port: str = "traffic-port"
    interval_s: int = 10
    timeout_s: int | None = None
    healthy_threshold: int = 2
    unhealthy_threshold: int = 2
    path: str | None = None
    matcher: str | None = None

    @property
    def effective_timeout_s(self) -> int:
        if self.timeout_s is not None:
            return self.timeout_s
        default = 6 if self.protocol == "HTTP" else 10
        return min(default, self.interval_s)

    def api_arguments(self) -> dict:
        """The HealthCheck* arguments of create_target_group."""
        arguments = {
            "HealthCheckEnabled": True,
            "HealthCheckProtocol": self.protocol,
            "HealthCheckPort": str(self.port),
            "HealthCheckIntervalSeconds": self.interval_s,
            "HealthCheckTimeoutSeconds": self.effective_timeout_s,
            "HealthyThresholdCount": self.healthy_threshold,
            "UnhealthyThresholdCount": self.unhealthy_threshold,
        }
        if self.protocol in ("HTTP", "HTTPS"):
            arguments["HealthCheckPath"] = self.path or "/"
            arguments["Matcher"] = {"HttpCode": self.matcher or "200-399"}
        return arguments


@dataclass(frozen=True)
class TargetGroup:
    """A target group: protocol (TCP: plaintext to the target; TLS: re-encrypted) and port."""

    protocol: str
    port: int
    health_check: HealthCheck = HealthCheck()

    @property
    def key(self) -> str:
        """The target group's name within the stack, e.g. `tcp8080`."""
        return f"{self.protocol.lower()}{self.port}"


@dataclass(frozen=True)
class Listener:
    """A listener on the load balancer and the target group it forwards to."""

    port: int
    target_group: TargetGroup
    protocol: str = "TLS"


DEFAULT_LISTENERS = (
    Listener(443, TargetGroup("TCP", 8080)),
    Listener(9443, TargetGroup("TLS", 8443)),
)


@dataclass(frozen=True)
class Certificate:
    """Where a listener certificate comes from.

    - `source="generate"` (default): a fresh root, intermediate and leaf for `dns_names` with a
      `key_type` key, imported into ACM; the files and key live next to the state file.
    - `source="import"`: the user's `cert_file`, `key_file` and optional `chain_file`
      (intermediates, leaf excluded), imported into ACM; `ca_bundle` is what clients trust.
    - `source="existing"`: an ACM certificate `arn` already in the region; `ca_bundle` optional
      (None: the system store, as for a public certificate).
    """

    source: str = "generate"
    dns_names: tuple[str, ...] = ("nlb-tls-suite.test",)
    key_type: str = "RSA_2048"
    arn: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    chain_file: Path | None = None
    ca_bundle: Path | None = None

    @classmethod
    def existing(cls, arn: str, ca_bundle: Path | None = None) -> Certificate:
        return cls(source="existing", dns_names=(), arn=arn, ca_bundle=ca_bundle)

    @classmethod
    def from_files(cls, cert_file, key_file, chain_file=None, ca_bundle=None) -> Certificate:
        """An imported certificate; a missing CERT_FILE or KEY_FILE (None) is reported by
        `infra.validation.validate`, not here."""
        return cls(
            source="import",
            dns_names=(),
            cert_file=Path(cert_file) if cert_file else None,
            key_file=Path(key_file) if key_file else None,
            chain_file=Path(chain_file) if chain_file else None,
            ca_bundle=Path(ca_bundle) if ca_bundle else None,
        )


@dataclass(frozen=True)
class AccessLogs:
    """Access logs: a bucket the stack creates (`bucket=None`) or an existing one, and a prefix.

    `keep_logs` keeps a created bucket and its objects at teardown (tagged so the sweeper
    leaves it too). `enabled=False` leaves the access-log attributes off and creates no bucket.
    """

    bucket: str | None = None
    prefix: str = "nlb-tls"
    keep_logs: bool = False
    enabled: bool = True


@dataclass(frozen=True)
class Network:
    """Network and compute choices for a real account.

    `subnet_ids` empty: a dedicated VPC with two public subnets in two availability zones.
    `ami_id` None: the latest Amazon Linux 2023 from the public SSM parameter.
    """

    client_cidr: str = "0.0.0.0/0"
    vpc_cidr: str = "10.80.0.0/16"
    subnet_ids: tuple[str, ...] = ()
    instance_type: str = "t3.micro"
    ami_parameter: str = AL2023_AMI_PARAMETER
    ami_id: str | None = None


@dataclass(frozen=True)
class Stack:
    """Every choice of one stack; `infra.validation` checks them all before anything is made."""

    region: str = "eu-west-1"
    run_id: str = field(default_factory=_new_run_id)
    name_prefix: str = "nlb-tls"
    created_at: str = field(default_factory=_utc_now)
    listeners: tuple[Listener, ...] = DEFAULT_LISTENERS
    ssl_policy: str = "ELBSecurityPolicy-2016-08"
    alpn_policy: str | None = None
    certificate: Certificate | None = Certificate()
    extra_certificates: tuple[Certificate, ...] = ()
    access_logs: AccessLogs = AccessLogs()
    network: Network = Network()
    scheme: str = "internet-facing"
    targets_per_group: int = 2

    @property
    def partition(self) -> str:
        return partition_of(self.region)

    @property
    def name(self) -> str:
        """The load balancer's name, and the stem of every other name: `PREFIX-RUNID`."""
        return f"{self.name_prefix}-{self.run_id}"

    def resource_name(self, suffix: str) -> str:
        return f"{self.name}-{suffix}"

    def bucket_name(self, account_id: str) -> str:
        """The log bucket to use: the given one, or `PREFIX-RUNID-ACCOUNT-REGION` (globally
        unique, since bucket names are)."""
        if self.access_logs.bucket:
            return self.access_logs.bucket
        return f"{self.name}-{account_id}-{self.region}"

    def tags(self) -> dict[str, str]:
        """The tags every taggable resource of the stack carries."""
        return {
            TAG_PROJECT: PROJECT,
            TAG_RUN_ID: self.run_id,
            TAG_CREATED_AT: self.created_at,
        }

    def tag_list(self, name: str | None = None) -> list[dict[str, str]]:
        """Tags in the `[{"Key": …, "Value": …}]` shape of the AWS APIs, with `Name` if given."""
        tags = [{"Key": k, "Value": v} for k, v in self.tags().items()]
        if name:
            tags.append({"Key": "Name", "Value": name})
        return tags

    @property
    def target_groups(self) -> tuple[TargetGroup, ...]:
        return tuple(listener.target_group for listener in self.listeners)
