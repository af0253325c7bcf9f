"""The data plane: one loopback server per TLS listener, kept in step with the configuration."""

import asyncio
import logging
import ssl
import threading
from dataclasses import dataclass
from typing import Callable, Optional

from infra.access_logs import AccessLogEntry, SocketAddress, elb_field, protocol_field
from infra.policies import UnknownPolicyError, get_policy

from .certificates import CertificateGone, CertificateMaterialError, CertificateSource
from .config import Listener, LoadBalancerConfig, TargetGroup
from .health import HealthChecker
from .proxy import HANDSHAKE_TIMEOUT_SECONDS, TARGET_CONNECT_TIMEOUT_SECONDS, ClientConnection
from .records import ClosedConnection
from .routing import TargetSelector
from .tls import (
    IDLE_TIMEOUT_SECONDS,
    ListenerTls,
    UnknownAlpnPolicyError,
    alpn_protocols,
    backend_context,
)

__all__ = ["DataPlane", "ListenerState", "TlsBuilder", "access_log_entry"]

logger = logging.getLogger(__name__)

DEFAULT_POLICY = "ELBSecurityPolicy-2016-08"


@dataclass(frozen=True)
class ListenerState:
    """A TLS listener as new connections see it: its configuration, TLS and target group."""

    listener: Listener
    tls: ListenerTls
    target_group: Optional[TargetGroup]


class TlsBuilder:
    """Turns a configuration into each TLS listener's ListenerTls, reusing unchanged ones.

    Runs in the configuration watcher's thread: loading certificates and building contexts
    costs milliseconds the event loop should not spend. A certificate that cannot be served
    only goes into its listener's `unservable`; the listener itself is still built.
    """

    def __init__(self, source: CertificateSource) -> None:
        self._source = source
        self._certificates: dict = {}
        self._built: dict = {}
        self._served: dict[str, ListenerTls] = {}

    def build(self, config: LoadBalancerConfig) -> dict[str, ListenerTls]:
        """ListenerTls per TLS listener ARN.

        A listener whose settings cannot be served at all (a security or ALPN policy this
        table does not know) keeps the ListenerTls it had, so it stays on its address; one
        that never had any is left out. Either way a warning names why.
        """
        versions = {version.arn: version for version in config.certificates}
        result, built = {}, {}
        for listener in config.listeners:
            if listener.protocol != "TLS":
                continue
            try:
                result[listener.arn] = self._listener_tls(listener, versions, built)
            except (UnknownPolicyError, UnknownAlpnPolicyError, ssl.SSLError) as exc:
                # The NLB's API refuses such a change, so the listener goes on as before.
                previous = self._served.get(listener.arn)
                logger.warning("listener %s (port %s) cannot serve TLS: %s; %s",
                               listener.id, listener.port, exc,
                               "it keeps its previous settings" if previous else "not served")
                if previous is not None:
                    result[listener.arn] = previous
        self._built = built
        self._served = result
        current = set(versions.values())
        self._certificates = {v: c for v, c in self._certificates.items() if v in current}
        return result

    def _listener_tls(self, listener: Listener, versions: dict, built: dict) -> ListenerTls:
        arns = [listener.default_certificate_arn or ""] + list(listener.certificate_arns)
        key = (listener.ssl_policy, listener.alpn_policy, listener.default_certificate_arn,
               tuple(versions.get(arn) for arn in arns))
        if key in self._built:
            built[key] = self._built[key]
        if key not in built:
            certificates, problems = {}, {}
            for arn in arns:
                try:
                    certificates[arn] = self._certificate(versions.get(arn), arn)
                except (CertificateGone, CertificateMaterialError, LookupError) as exc:
                    problems[arn] = str(exc)
            policy = get_policy(listener.ssl_policy or DEFAULT_POLICY)
            built[key] = ListenerTls.build(
                policy, alpn_protocols(listener.alpn_policy),
                listener.default_certificate_arn or "", certificates, problems,
            )
        return built[key]

    def _certificate(self, version, arn: str):
        if not arn:
            raise LookupError("the listener has no default certificate")
        if version is None or version.serial is None:
            raise CertificateGone(f"certificate {arn} is not in ACM any more")
        if version not in self._certificates:
            self._certificates[version] = self._source.load(arn)
        return self._certificates[version]


def access_log_entry(closed: ClosedConnection, config: LoadBalancerConfig) -> AccessLogEntry:
    """The version 2.0 access-log entry of one closed connection."""
    return AccessLogEntry(
        time=closed.ended_at,
        elb=elb_field(config.name, config.id),
        listener=closed.listener_arn.rsplit("/", 1)[-1],
        client=SocketAddress(*closed.client),
        destination=SocketAddress(*closed.destination),
        connection_time=closed.connection_ms,
        tls_handshake_time=closed.handshake_ms,
        received_bytes=closed.received_bytes,
        sent_bytes=closed.sent_bytes,
        incoming_tls_alert=closed.incoming_alert,
        chosen_cert_arn=closed.certificate_arn,
        tls_cipher=closed.cipher,
        tls_protocol_version=protocol_field(closed.protocol) if closed.protocol else None,
        domain_name=closed.server_name,
        alpn_fe_protocol=closed.alpn_fe,
        alpn_be_protocol=closed.alpn_be,
        alpn_client_preference_list=closed.client_alpn,
        tls_connection_creation_time=closed.started_at,
    )


Deliver = Callable[[str, AccessLogEntry, str, str], None]
"""(load balancer ARN, entry, bucket, prefix) -> None: LogDelivery.record."""


class DataPlane:
    """Serves every TLS listener of one load balancer on a loopback address.

    Each listener gets its own server on `host`, on an ephemeral port unless
    `listener_ports_as_is` (then on the listener's own port). `apply()` installs a new
    configuration for new connections; open ones keep the one they started with. Every
    connection that ends is turned into an access-log entry and given to `deliver` while
    the load balancer's `access_logs.s3.enabled` is true, with the bucket and prefix of
    that moment. A client that has not completed its handshake `handshake_timeout` seconds
    after connecting is disconnected, and one with no traffic either way for `idle_timeout`
    seconds (350 on the NLB) is reset on both sides; a target that does not take the TCP
    connection within `target_connect_timeout` seconds gets the client reset. Methods run in
    the event loop's thread unless they say otherwise.
    """

    def __init__(self, selector: TargetSelector, health: HealthChecker, deliver: Deliver,
                 *, host: str = "127.0.0.1", listener_ports_as_is: bool = False,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
                 idle_timeout: float = IDLE_TIMEOUT_SECONDS,
                 target_connect_timeout: float = TARGET_CONNECT_TIMEOUT_SECONDS) -> None:
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.target_connect_timeout = target_connect_timeout
        self._selector = selector
        self._health = health
        self._deliver = deliver
        self._host = host
        self._ports_as_is = listener_ports_as_is
        self._config: Optional[LoadBalancerConfig] = None
        self._states: dict[str, ListenerState] = {}
        self._servers: dict[str, tuple[int, asyncio.AbstractServer]] = {}
        self._addresses: dict[str, tuple[str, int]] = {}
        self._addresses_lock = threading.Lock()
        self._connections: set = set()
        self._backend_contexts: dict = {}
        self._said: set = set()
        self.observers: list[Callable[[ClosedConnection], None]] = []

    # ---- configuration -------------------------------------------------------------------

    async def apply(self, config: LoadBalancerConfig, tls: dict[str, ListenerTls]) -> None:
        """Serve `config`: start servers for new listeners, stop those of removed ones."""
        self._config = config
        states = {
            listener.arn: ListenerState(
                listener, tls[listener.arn], config.target_group(listener.target_group_arn)
            )
            for listener in config.listeners if listener.arn in tls
        }
        for arn in list(self._servers):
            wanted = states.get(arn)
            if wanted is None or self._bound_port(wanted) != self._servers[arn][0]:
                self._stop_server(arn)
        self._states = states
        for arn, state in states.items():
            if arn not in self._servers:
                await self._serve(state)
            self._say_unservable(state)
        for listener in config.listeners:
            if listener.protocol != "TLS":
                # The sandbox reproduces TLS termination; a plain TCP (or UDP) listener is
                # configured in moto but carries no traffic here.
                self._say_once((listener.arn, listener.protocol),
                               "listener %s (port %s) is %s: the sandbox serves TLS listeners "
                               "only, so nothing is served on it", listener.id, listener.port,
                               listener.protocol)
        self._health.apply(config.target_groups, config.groups_in_use())

    def addresses(self) -> dict[str, tuple[str, int]]:
        """Listener ARN -> (host, port) where it is served now; safe from any thread."""
        with self._addresses_lock:
            return dict(self._addresses)

    def _bound_port(self, state: ListenerState) -> int:
        return state.listener.port if self._ports_as_is else 0

    async def _serve(self, state: ListenerState) -> None:
        arn, listener = state.listener.arn, state.listener
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: self._accept(arn), self._host, self._bound_port(state),
                reuse_address=True, backlog=2048,
            )
        except OSError as exc:
            logger.error("cannot serve listener port %s on %s: %s", listener.port, self._host, exc)
            return
        self._servers[arn] = (self._bound_port(state), server)
        address = server.sockets[0].getsockname()[:2]
        with self._addresses_lock:
            self._addresses[arn] = (address[0], int(address[1]))
        logger.info("listener %s (TLS %s) is served on %s:%s",
                    listener.id, listener.port, address[0], address[1])

    def _stop_server(self, arn: str) -> None:
        _, server = self._servers.pop(arn)
        server.close()
        with self._addresses_lock:
            self._addresses.pop(arn, None)

    def _say_unservable(self, state: ListenerState) -> None:
        for arn, reason in state.tls.unservable.items():
            self._say_once(
                (state.listener.arn, arn, reason),
                "listener %s (port %s) cannot serve certificate %s: %s%s",
                state.listener.id, state.listener.port, arn or "-", reason,
                "; it refuses connections" if arn == state.tls.default_arn else "",
            )

    def _say_once(self, key, message: str, *args) -> None:
        if key not in self._said:
            self._said.add(key)
            logger.warning(message, *args)

    # ---- what connections ask of the data plane (see ClientConnection) --------------------

    def _accept(self, arn: str) -> ClientConnection:
        return ClientConnection(self._states[arn], self)

    def _current(self, state: ListenerState) -> ListenerState:
        # Targets are chosen from the registrations of now, not of the connection's start.
        return self._states.get(state.listener.arn, state)

    def route(self, state: ListenerState, flow: tuple):
        """The target for a connection whose handshake just completed, or None."""
        group = self._current(state).target_group
        if group is None:
            return None
        return self._selector.choose(group.arn, group.targets, flow)

    def backend_context(self, state: ListenerState, alpn: Optional[str]):
        """The TLS context towards a TLS target group's target, None for a TCP group."""
        group = self._current(state).target_group
        if group is None or group.protocol != "TLS":
            return None
        key = (state.tls.policy, alpn)
        if key not in self._backend_contexts:
            context = backend_context(state.tls.policy)
            if alpn:
                context.set_alpn_protocols([alpn])
            self._backend_contexts[key] = context
        return self._backend_contexts[key]

    def refusing(self, state: ListenerState, reason: str) -> None:
        """A connection was refused because its certificate cannot be served; said once,
        and not at all when applying the configuration already said it."""
        self._say_once(
            (state.listener.arn, state.tls.default_arn, reason),
            "listener %s (port %s) refuses connections: %s",
            state.listener.id, state.listener.port, reason,
        )

    def connection_opened(self, connection: ClientConnection) -> None:
        """Track an open connection, so that stop() can end it and log it."""
        self._connections.add(connection)

    def connection_closed(self, connection: ClientConnection, closed: ClosedConnection) -> None:
        """Log the access-log entry of a connection that ended."""
        self._connections.discard(connection)
        for observer in self.observers:
            observer(closed)
        config = self._config
        if config is None or not config.access_logs.enabled:
            return
        settings = config.access_logs
        try:
            entry = access_log_entry(closed, config)
            self._deliver(config.arn, entry, settings.bucket, settings.prefix)
        except ValueError as exc:
            self._say_once(("log", settings.bucket, settings.prefix, type(exc)),
                           "access-log entries for bucket %s prefix %r cannot be written: %s",
                           settings.bucket, settings.prefix, exc)

    @property
    def open_connections(self) -> int:
        """How many client connections are open."""
        return len(self._connections)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, end every open connection (each gets its entry), stop checks."""
        for arn in list(self._servers):
            self._stop_server(arn)
        for connection in list(self._connections):
            connection.reset("shutdown")
        deadline = asyncio.get_running_loop().time() + timeout
        while self._connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        self._health.stop()
