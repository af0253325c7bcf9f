"""Closing a data-plane connection with a TCP reset, as the NLB does on a failed target."""

# TCP_NODELAY needs nothing here: uvloop (like asyncio's own loop) sets it on every TCP
# transport it makes, so short answers never wait for Nagle's algorithm.

import asyncio
import socket
import struct
from typing import Optional

__all__ = ["reset_transport"]


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
