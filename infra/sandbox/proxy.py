"""One client connection through a TLS listener: handshake, forwarding to a target, its record.

The TLS is done here with `ssl.MemoryBIO` and `SSLObject` rather than asyncio's start_tls,
because the NLB's log entry needs what start_tls hides: the raw ClientHello (SNI and the
client's ALPN list, read before a certificate is chosen), the handshake's duration, the
alert a client sends, and the plaintext byte counts on both sides of the encryption.
"""

import asyncio
import logging
import ssl
import time
from typing import Optional

from ._sockets import reset_transport
from .client_hello import NeedMoreData, NotAClientHello, parse_client_hello
from .config import Target
from .records import ConnectionFacts
from .target_leg import RECORD_SIZE, TargetConnection, joined
from .tls import NoServableCertificate, alert_number

__all__ = [
    "ClientConnection",
    "HANDSHAKE_TIMEOUT_SECONDS",
    "TARGET_CONNECT_TIMEOUT_SECONDS",
]

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_SECONDS = 10.0
TARGET_CONNECT_TIMEOUT_SECONDS = 10.0  # the NLB's own is not documented; 10 s is TCP's
_HELLO, _HANDSHAKE, _OPEN, _CLOSED = "hello", "handshake", "open", "closed"


def _address(info) -> tuple[str, int]:
    return (info[0], int(info[1])) if info else ("0.0.0.0", 0)


class ClientConnection(asyncio.Protocol):
    """The client side of one connection to a TLS listener.

    `state` is the listener's configuration when the connection was accepted (later changes
    apply to new connections only, as on the NLB); `plane` chooses targets and receives the
    ClosedConnection when the connection ends (see DataPlane).
    """

    def __init__(self, state, plane) -> None:
        self._state = state
        self._plane = plane
        self._phase = _HELLO
        self._hello = bytearray()
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls: Optional[ssl.SSLObject] = None
        self._transport: Optional[asyncio.Transport] = None
        self._target = None
        self._connecting: Optional[asyncio.Task] = None
        self._connect_timed_out = False
        self._pending: list[bytes] = []
        self._client_done = self._target_done = False
        self._facts = ConnectionFacts()
        self._timer: Optional[asyncio.TimerHandle] = None
        self.last_activity = time.monotonic()

    # ---- asyncio callbacks for the client's socket ---------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._facts.client = _address(transport.get_extra_info("peername"))
        self._facts.destination = _address(transport.get_extra_info("sockname"))
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._plane.handshake_timeout, self._handshake_timed_out)
        self._plane.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if self._phase == _HELLO:
            self._receive_hello(data)
        elif self._phase != _CLOSED:
            self._incoming.write(data)
            self._advance()

    def eof_received(self) -> bool:
        if self._phase != _OPEN:
            self._end("handshake_failed" if self._phase == _HANDSHAKE else "not_tls")
            return False
        # A FIN without close_notify still ends what the client sends; pass the half-close on.
        self._client_finished()
        return True

    def pause_writing(self) -> None:
        if self._target is not None:
            self._target.pause_reading()

    def resume_writing(self) -> None:
        if self._target is not None:
            self._target.resume_reading()

    def pause_reading(self) -> None:
        """Stop reading from the client while the target cannot take more."""
        if self._phase != _CLOSED:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the client again."""
        if self._phase != _CLOSED:
            self._transport.resume_reading()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if self._phase == _CLOSED:
            return
        if exc is not None and self._facts.outcome == "closed":
            self._facts.outcome = "client_reset"
        self._phase = _CLOSED
        if self._timer is not None:
            self._timer.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
        if self._target is not None:
            self._target.close(reset=exc is not None)
        self._plane.connection_closed(self, self._facts.freeze(self._state.listener.arn))

    # ---- the handshake -------------------------------------------------------------------

    def _receive_hello(self, data: bytes) -> None:
        self._hello += data
        try:
            hello = parse_client_hello(bytes(self._hello))
        except NeedMoreData:
            return
        except NotAClientHello as exc:
            logger.debug("connection from %s:%s sent no ClientHello: %s",
                         *self._facts.client, exc)
            self._end("not_tls")
            return
        self._facts.server_name = hello.server_name or None
        self._facts.client_alpn = tuple(hello.alpn_protocols) or None
        try:
            arn, context = self._state.tls.choose(hello)
        except NoServableCertificate as exc:
            self._plane.refusing(self._state, str(exc))
            self._end("refused")
            return
        self._facts.certificate_arn = arn
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._incoming.write(bytes(self._hello))
        self._hello = bytearray()
        self._phase = _HANDSHAKE
        self._advance()

    def _advance(self) -> None:
        try:
            if self._phase == _HANDSHAKE:
                self._handshake()
            if self._phase == _OPEN:
                self._read_plaintext()
        except ssl.SSLError as exc:
            self._tls_failed(exc)
        self._flush()

    def _handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return
        facts = self._facts
        facts.handshake_ms = int((time.monotonic() - facts.started) * 1000)
        facts.cipher = self._tls.cipher()[0]
        facts.protocol = self._tls.version()
        facts.alpn_fe = self._tls.selected_alpn_protocol()
        self._phase = _OPEN
        self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(
            self._plane.idle_timeout, self._idle_check
        )
        self._connect_target()

    def _tls_failed(self, exc: ssl.SSLError) -> None:
        alert = alert_number(exc)
        if alert is not None:
            self._facts.alert = alert
        logger.debug("TLS with %s:%s failed: %s", *self._facts.client, exc)
        self._flush()  # the alert OpenSSL answers with goes out before the close
        self._end("handshake_failed" if self._phase == _HANDSHAKE else "closed")

    def _handshake_timed_out(self) -> None:
        if self._phase in (_HELLO, _HANDSHAKE):
            self._end("handshake_timeout")

    def _idle_check(self) -> None:
        idle = time.monotonic() - self.last_activity
        if self._target is not None:
            idle = min(idle, time.monotonic() - self._target.last_activity)
        if idle >= self._plane.idle_timeout:
            # The NLB resets both sides of a TLS connection idle for 350 s.
            self.reset("idle_timeout")
            return
        self._timer = asyncio.get_running_loop().call_later(
            self._plane.idle_timeout - idle, self._idle_check
        )

    # ---- plaintext from the client to the target ------------------------------------------

    def _read_plaintext(self) -> None:
        # What has arrived is decrypted record by record and passed on in one piece.
        records: list[bytes] = []
        try:
            while not self._client_done:
                try:
                    data = self._tls.read(RECORD_SIZE)
                except ssl.SSLWantReadError:
                    return
                except ssl.SSLZeroReturnError:
                    data = b""
                if not data:  # close_notify: the client has finished sending
                    self._to_target(records)
                    self._client_finished()
                    return
                records.append(data)
        finally:
            self._to_target(records)

    def _to_target(self, records: list[bytes]) -> None:
        if not records:
            return
        data = joined(records)
        self._facts.received += len(data)
        if self._target is not None and self._target.ready:
            self._target.send(data)
        else:
            self._pending.append(data)

    def _client_finished(self) -> None:
        if self._client_done:
            return
        self._client_done = True
        if self._target is not None and self._target.ready:
            self._target.finish_sending()
        self._close_when_both_done()

    def _connect_target(self) -> None:
        flow = (self._facts.client, self._facts.destination)
        target = self._plane.route(self._state, flow)
        if target is None:
            logger.warning("listener %s has no registered target; resetting %s:%s",
                           self._state.listener.port, *self._facts.client)
            self.reset("no_target")
            return
        self._facts.target = target
        context = self._plane.backend_context(self._state, self._facts.alpn_fe)
        self._connecting = asyncio.get_running_loop().create_task(
            self._open_target(target, context)
        )

    async def _open_target(self, target: Target, context: Optional[ssl.SSLContext]) -> None:
        # A timer that cancels this task, rather than asyncio.wait_for, which would wrap the
        # connect in a second task on every connection.
        loop = asyncio.get_running_loop()
        seconds = self._plane.target_connect_timeout
        timeout = loop.call_later(seconds, self._target_timed_out)
        try:
            await loop.create_connection(
                lambda: TargetConnection(self, context, self._facts.server_name),
                target.id, target.port,
            )
        except OSError as exc:
            self._target_unreachable(target, str(exc) or type(exc).__name__)
        except asyncio.CancelledError:
            if self._connect_timed_out:  # else the client left and connection_lost cancelled
                self._target_unreachable(target, f"no connection within {seconds:g} s")
        finally:
            timeout.cancel()
            self._connecting = None

    def _target_timed_out(self) -> None:
        if self._connecting is not None:
            self._connect_timed_out = True
            self._connecting.cancel()

    def _target_unreachable(self, target: Target, reason: str) -> None:
        logger.info("target %s:%s of listener %s failed: %s; resetting the client",
                    target.id, target.port, self._state.listener.port, reason)
        self.reset("target_failed")

    # ---- callbacks from the target's side (see TargetConnection) --------------------------

    def target_made(self, target) -> None:
        """The target's TCP connection is up (its TLS handshake may still be running)."""
        if self._phase == _CLOSED:
            target.close(reset=True)
            return
        self._target = target

    def target_ready(self) -> None:
        """The target can take data: send what the client sent so far."""
        for data in self._pending:
            self._target.send(data)
        self._pending = []
        if self._client_done:
            self._target.finish_sending()

    def from_target(self, data: bytes) -> None:
        """Plaintext from the target: encrypt it to the client."""
        if self._phase != _OPEN or self._target_done:
            return
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            self._tls_failed(exc)
            return
        self._facts.sent += len(data)
        self._flush()

    def target_finished(self) -> None:
        """The target has finished sending: close_notify and FIN to the client."""
        if self._phase != _OPEN or self._target_done:
            return
        self._target_done = True
        try:
            self._tls.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass  # close_notify is written; the client's own may come later or never
        self._flush()
        try:
            self._transport.write_eof()
        except OSError:
            pass  # the client is gone; connection_lost follows
        self._close_when_both_done()

    def target_closed(self) -> None:
        """The target's connection ended after it had finished sending."""
        if not self._client_done:
            self._client_done = True  # nothing the client still sends has anywhere to go
        self._close_when_both_done()

    def target_failed(self, reason: str) -> None:
        """The target refused, reset or broke its TLS: reset the client as the NLB does."""
        logger.info("target %s:%s of listener %s: %s; resetting the client",
                    self._facts.target.id, self._facts.target.port,
                    self._state.listener.port, reason)
        self.reset("target_failed")

    def note_alpn_be(self, protocol: Optional[str]) -> None:
        """The ALPN protocol agreed with the target."""
        self._facts.alpn_be = protocol

    # ---- ending --------------------------------------------------------------------------

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close_when_both_done(self) -> None:
        if self._client_done and self._target_done:
            self._end("closed")

    def _end(self, outcome: str) -> None:
        """Close the client gracefully (what is buffered still goes out)."""
        if self._phase == _CLOSED:
            return
        if self._facts.outcome == "closed":
            self._facts.outcome = outcome
        if self._target is not None:
            self._target.close(reset=False)
        self._transport.close()

    def reset(self, outcome: str) -> None:
        """Reset the client and the target with TCP RSTs."""
        if self._phase == _CLOSED:
            return
        if self._facts.outcome == "closed":
            self._facts.outcome = outcome
        if self._target is not None:
            self._target.close(reset=True)
        reset_transport(self._transport)
