"""One bundle of boto3 clients for a region (and optionally a moto endpoint), used by all code."""

from __future__ import annotations

import logging
import os
import re
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Mapping

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError

__all__ = [
    "Clients",
    "new_session",
    "AccountNotAllowedError",
    "AccountIdError",
    "EndpointUrlError",
    "EndpointUnreachableError",
    "check_endpoint_url",
    "check_endpoint_reachable",
    "ALLOWED_ACCOUNTS_ENV",
    "allowed_accounts",
    "check_account",
    "error_code",
]

log = logging.getLogger(__name__)

ALLOWED_ACCOUNTS_ENV = "NLB_TLS_SUITE_ALLOWED_ACCOUNTS"
_ACCOUNT_ID = re.compile(r"[0-9]{12}")

# Standard retry mode retries throttling and transient 5xx answers with backoff; ten attempts
# ride out the bursts of DescribeTargetHealth and DeleteCertificate calls the waits make.
_RETRIES = {"max_attempts": 10, "mode": "standard"}


# One loader for every session: a new botocore session otherwise parses the service models
# (EC2's is several megabytes of JSON) again, about half a second per Clients bundle.
_LOADER = botocore.loaders.create_loader()


def new_session() -> boto3.session.Session:
    """A boto3 session that shares the process's parsed service models."""
    core = botocore.session.get_session()
    core.register_component("data_loader", _LOADER)
    return boto3.session.Session(botocore_session=core)


class AccountNotAllowedError(RuntimeError):
    """The credentials belong to an account that is not on the allow-list (or none was given)."""


class AccountIdError(ValueError):
    """An allow-list value (--aws-account or the environment variable) that is not 12-digit
    account ids."""


class EndpointUrlError(ValueError):
    """An endpoint URL (--endpoint-url, a state file's `endpoint_url`) that is not an http or
    https URL with a host."""


class EndpointUnreachableError(ConnectionError):
    """Nothing accepts connections at an endpoint URL: the moto server or sandbox is gone."""


def check_endpoint_url(value) -> str:
    """VALUE when it is an http or https URL with a host (`http://127.0.0.1:5000`); raises
    EndpointUrlError naming the value and the accepted form otherwise."""
    accepted = "accepted an http or https URL with a host, e.g. http://127.0.0.1:5000"
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise EndpointUrlError(f"endpoint URL {value!r}: {accepted}")
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a port out of range or not a number)
    except ValueError:
        raise EndpointUrlError(f"endpoint URL {value!r}: {accepted}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointUrlError(f"endpoint URL {value!r}: {accepted}")
    return value


def check_endpoint_reachable(url: str, timeout_s: float = 5.0) -> None:
    """Raise EndpointUnreachableError unless a TCP connection to URL's host and port opens.

    botocore retries a refused connection like any transient error, with backoff, for about
    half a minute before it gives up with a traceback; a moto server or sandbox that has
    stopped does not come back in that time, so one connection attempt decides at once.
    """
    parts = urllib.parse.urlsplit(check_endpoint_url(url))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            pass
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise EndpointUnreachableError(
            f"cannot connect to endpoint {url} ({reason}): the moto server or sandbox that "
            "served it is no longer running; start it again at that address") from None


class Clients:
    """Lazily created boto3 clients sharing one session, one region and one endpoint.

    `endpoint_url` points every client at a moto server (S3 then uses path-style addressing,
    since `BUCKET.127.0.0.1` does not resolve). Without it the clients talk to AWS.
    Attributes: `elbv2`, `acm`, `s3`, `ec2`, `ssm`, `sts`.
    """

    def __init__(self, region: str, endpoint_url: str | None = None, session=None):
        self.region = region
        self.endpoint_url = endpoint_url
        self.session = session or new_session()
        self._clients: dict = {}
        self._hooks: list[tuple[str, Callable]] = []

    @classmethod
    def for_state(cls, state: Mapping) -> Clients:
        """Clients for the region and endpoint recorded in a state file."""
        return cls(state["region"], state.get("endpoint_url"))

    def client(self, service: str):
        """The client for SERVICE, created on first use with retries configured."""
        if service not in self._clients:
            config = Config(
                retries=dict(_RETRIES),
                connect_timeout=10,
                read_timeout=60,
                s3={"addressing_style": "path"} if self.endpoint_url else None,
            )
            made = self.session.client(
                service, region_name=self.region, endpoint_url=self.endpoint_url, config=config
            )
            for event, handler in self._hooks:
                made.meta.events.register(event, handler)
            self._clients[service] = made
        return self._clients[service]

    def register(self, event: str, handler: Callable) -> None:
        """Register a botocore event HANDLER on every client, made now or later.

        Tests use `before-call` to record or fail operations; botocore copies the session's
        event emitter into each client when it is created, hence the bookkeeping here.
        """
        self._hooks.append((event, handler))
        for made in self._clients.values():
            made.meta.events.register(event, handler)

    def unregister(self, event: str, handler: Callable) -> None:
        """Remove a handler added with `register` from every client."""
        self._hooks.remove((event, handler))
        for made in self._clients.values():
            made.meta.events.unregister(event, handler)

    @property
    def hooks(self) -> tuple[tuple[str, Callable], ...]:
        """The (event, handler) pairs registered, oldest first."""
        return tuple(self._hooks)

    def account_id(self) -> str:
        """The account of the credentials, from sts get-caller-identity."""
        return self.sts.get_caller_identity()["Account"]

    elbv2 = property(lambda self: self.client("elbv2"))
    acm = property(lambda self: self.client("acm"))
    s3 = property(lambda self: self.client("s3"))
    ec2 = property(lambda self: self.client("ec2"))
    ssm = property(lambda self: self.client("ssm"))
    sts = property(lambda self: self.client("sts"))


def allowed_accounts(given: Iterable[str] = (),
                     environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The account allow-list: values given on the command line, else the environment variable.

    Each value may hold several ids separated by commas or spaces. Raises AccountIdError,
    naming the value and where it came from, when one holds anything but 12-digit ids (or,
    given on the command line, nothing at all). An unset or blank variable is no list.
    """
    given = list(given)
    if given:
        sources = [(f"--aws-account {value!r}", value) for value in given]
    else:
        value = environ.get(ALLOWED_ACCOUNTS_ENV, "")
        sources = [(f"{ALLOWED_ACCOUNTS_ENV}={value!r}", value)] if value.strip() else []
    ids = []
    for source, value in sources:
        parts = value.replace(",", " ").split()
        if not parts or not all(_ACCOUNT_ID.fullmatch(part) for part in parts):
            raise AccountIdError(
                f"{source}: expected a 12-digit AWS account id (several may be given, "
                "separated by commas or spaces)"
            )
        ids.extend(parts)
    return tuple(ids)


def check_account(clients: Clients, allowed: Iterable[str]) -> str:
    """Return the caller's account id, or raise AccountNotAllowedError.

    Against AWS (no endpoint URL) an allow-list is required: a suite that creates and deletes
    resources must never run in an account nobody named. Against a moto endpoint the list is
    checked only when one is given.
    """
    allowed = tuple(allowed)
    account = clients.account_id()
    if not allowed and clients.endpoint_url is None:
        raise AccountNotAllowedError(
            f"refusing to run against AWS account {account}: no account allow-list given; "
            f"pass --aws-account {account} or set {ALLOWED_ACCOUNTS_ENV}={account}"
        )
    if allowed and account not in allowed:
        raise AccountNotAllowedError(
            f"refusing to run against AWS account {account}: the allow-list holds "
            f"{', '.join(allowed)}"
        )
    log.info("account %s is allowed", account)
    return account


def error_code(error: ClientError) -> str:
    """The AWS error code of a ClientError (`NoSuchBucket`, `DependencyViolation`), or ""."""
    return error.response.get("Error", {}).get("Code", "")
