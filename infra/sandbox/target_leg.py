"""The target side of a connection: plaintext for TCP target groups, a new TLS session for TLS.

The NLB opens its own TLS session to a TLS target with the backend policy, does not verify
the target's certificate and passes the client's SNI on. Like the client side, the session
runs over memory BIOs so that a half-close travels both ways: asyncio's SSL transports
cannot write an EOF.
"""

import asyncio
import logging
import ssl
import time
from typing import Optional

from ._sockets import reset_transport

__all__ = ["RECORD_SIZE", "TargetConnection", "joined"]

logger = logging.getLogger(__name__)

# SSLObject.read returns at most one TLS record's plaintext (16 KiB) a call; asking for more
# only makes it allocate a larger buffer to shrink.
RECORD_SIZE = 16 * 1024


def joined(records: list[bytes]) -> bytes:
    """The records as one bytes object, and the list emptied; a lone record is not copied."""
    data = records[0] if len(records) == 1 else b"".join(records)
    records.clear()
    return data


class TargetConnection(asyncio.Protocol):
    """One connection from the data plane to a target, driven by its ClientConnection.

    `context` is None for a TCP target group (plaintext), else the backend policy's client
    context, which offers the target only the ALPN protocol agreed with the client (the
    bytes that follow are the client's, so no other protocol would do).
    """

    def __init__(self, client, context: Optional[ssl.SSLContext],
                 server_name: Optional[str]) -> None:
        self._client = client
        self._context = context
        self._server_name = server_name
        self._transport: Optional[asyncio.Transport] = None
        self._tls: Optional[ssl.SSLObject] = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._finished = False
        self._closing = False
        self.ready = False
        self.last_activity = time.monotonic()

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._client.target_made(self)
        if self._closing:
            return
        if self._context is None:
            self.ready = True
            self._client.target_ready()
            return
        try:
            self._tls = self._wrap(self._server_name or None)
        except (UnicodeError, ValueError):
            # ssl IDNA-encodes server_hostname and refuses what no DNS name could be (a label
            # over 63 bytes, say), though a client may send it as SNI. The NLB's leg to the
            # target then goes without SNI rather than not at all.
            logger.debug("SNI %r cannot be sent on to a target; sending none", self._server_name)
            self._tls = self._wrap(None)
        self._step()

    def _wrap(self, server_name: Optional[str]) -> ssl.SSLObject:
        return self._context.wrap_bio(self._incoming, self._outgoing, server_side=False,
                                      server_hostname=server_name)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if self._tls is None:
            self._client.from_target(data)
            return
        self._incoming.write(data)
        self._step()

    def eof_received(self) -> bool:
        if not self.ready:
            self._client.target_failed("the target closed during the TLS handshake")
            return False
        self._done_sending()
        return True  # the client may still be sending; keep our side open

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if self._closing:
            return
        self._closing = True
        if exc is not None and self._finished:
            # The target had finished sending (its FIN came first); an RST after that ends a
            # complete answer, so the client still gets a clean close.
            self._client.target_closed()
        elif exc is not None:
            self._client.target_failed(f"connection lost: {exc}")
        elif not self.ready:
            self._client.target_failed("the target closed before the connection was ready")
        else:
            self._done_sending()

    def pause_writing(self) -> None:
        self._client.pause_reading()

    def resume_writing(self) -> None:
        self._client.resume_reading()

    # ---- driven by the ClientConnection --------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send plaintext from the client to the target."""
        if self._closing:
            return
        if self._tls is None:
            self._transport.write(data)
            return
        self._tls.write(data)
        self._flush()

    def finish_sending(self) -> None:
        """The client has finished sending: pass the half-close on."""
        if self._closing:
            return
        if self._tls is not None:
            try:
                self._tls.unwrap()
            except (ssl.SSLWantReadError, ssl.SSLError):
                pass  # close_notify is written; the target's own comes later
            self._flush()
        try:
            self._transport.write_eof()
        except OSError:
            pass  # the target is already gone; connection_lost tells the client

    def pause_reading(self) -> None:
        """Stop reading from the target while the client cannot take more."""
        if self._transport is not None and not self._closing:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the target again."""
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()

    def close(self, reset: bool) -> None:
        """Close the connection to the target, with a TCP RST when `reset`."""
        self._closing = True
        if self._transport is None:
            return
        if reset:
            reset_transport(self._transport)
        else:
            self._transport.close()

    # ---- TLS to the target ---------------------------------------------------------------

    def _step(self) -> None:
        try:
            if not self.ready:
                self._tls.do_handshake()
                self.ready = True
                self._client.note_alpn_be(self._tls.selected_alpn_protocol())
                self._client.target_ready()
            self._read()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            self._flush()
            self._client.target_failed(f"TLS with the target failed: {exc}")
            return
        self._flush()

    def _read(self) -> None:
        # Everything decrypted from what has arrived goes to the client in one piece: one
        # TLS write and one send, rather than one of each per 16 KiB record.
        records: list[bytes] = []
        try:
            while not self._finished:
                try:
                    data = self._tls.read(RECORD_SIZE)
                except ssl.SSLZeroReturnError:
                    data = b""
                if not data:
                    self._pass_on(records)
                    self._done_sending()
                    return
                records.append(data)
        finally:
            self._pass_on(records)

    def _pass_on(self, records: list[bytes]) -> None:
        if records:
            self._client.from_target(joined(records))

    def _done_sending(self) -> None:
        if not self._finished:
            self._finished = True
            self._client.target_finished()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and not self._transport.is_closing():
            self._transport.write(data)
