"""Socket options the data plane sets on both legs of a connection."""

import asyncio
import socket
import struct
from typing import Optional

__all__ = ["reset_transport", "tune"]


def tune(transport: asyncio.BaseTransport) -> None:
    """Set TCP_NODELAY on a transport's TCP socket."""
    # asyncio sets TCP_NODELAY only on sockets it creates itself; without it short answers
    # wait for Nagle's algorithm (a 40 ms delay per request/response turn).
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def reset_transport(transport: Optional[asyncio.BaseTransport]) -> None:
    """Close with a TCP RST: SO_LINGER with a zero timeout, then close."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already gone; abort() below is all that is left to do
    transport.abort()
