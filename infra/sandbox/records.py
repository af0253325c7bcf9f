"""What a connection through the data plane did: measured while open, frozen when it ends."""

import datetime
import time
from dataclasses import dataclass
from typing import Optional

from .config import Target

__all__ = ["ClosedConnection", "ConnectionFacts"]


@dataclass(frozen=True)
class ClosedConnection:
    """What one client connection did, measured from the connection itself.

    `outcome` says how it ended: `closed`, `not_tls`, `refused`, `handshake_failed`,
    `handshake_timeout`, `no_target`, `target_failed`, `client_reset`, `idle_timeout`,
    `shutdown`. `protocol` is OpenSSL's name (`TLSv1.2`).
    """

    listener_arn: str
    started_at: datetime.datetime
    ended_at: datetime.datetime
    client: tuple[str, int]
    destination: tuple[str, int]
    connection_ms: int
    handshake_ms: Optional[int]
    received_bytes: int
    sent_bytes: int
    incoming_alert: Optional[int]
    certificate_arn: Optional[str]
    cipher: Optional[str]
    protocol: Optional[str]
    server_name: Optional[str]
    alpn_fe: Optional[str]
    alpn_be: Optional[str]
    client_alpn: Optional[tuple[str, ...]]
    target: Optional[Target]
    outcome: str


class ConnectionFacts:
    """The measurements of a connection while it is open (mutable; frozen when it ends)."""

    def __init__(self) -> None:
        self.started_at = datetime.datetime.now(datetime.timezone.utc)
        self.started = time.monotonic()
        self.client = self.destination = ("0.0.0.0", 0)
        self.handshake_ms: Optional[int] = None
        self.received = self.sent = 0
        self.alert: Optional[int] = None
        self.certificate_arn = self.cipher = self.protocol = None
        self.server_name = self.alpn_fe = self.alpn_be = None
        self.client_alpn: Optional[tuple[str, ...]] = None
        self.target: Optional[Target] = None
        self.outcome = "closed"

    def freeze(self, listener_arn: str) -> ClosedConnection:
        """The ClosedConnection of these facts, ended now."""
        elapsed = time.monotonic() - self.started
        return ClosedConnection(
            listener_arn=listener_arn,
            started_at=self.started_at,
            ended_at=self.started_at + datetime.timedelta(seconds=elapsed),
            client=self.client,
            destination=self.destination,
            connection_ms=int(elapsed * 1000),
            handshake_ms=self.handshake_ms,
            received_bytes=self.received,
            sent_bytes=self.sent,
            incoming_alert=self.alert,
            certificate_arn=self.certificate_arn,
            cipher=self.cipher,
            protocol=self.protocol,
            server_name=self.server_name,
            alpn_fe=self.alpn_fe,
            alpn_be=self.alpn_be,
            client_alpn=self.client_alpn,
            target=self.target,
            outcome=self.outcome,
        )
