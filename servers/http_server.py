"""The plain HTTP backend: `python -m servers.http_server [-l ADDR] [-p PORT] [PORT]`.

It answers GET, HEAD and POST on any path with a generated page, never a file: HTML
naming the server, its host name, its own address and the request path (and a POST's
body), or, with `Accept: application/json`, a JSON document describing the request as
the server saw it. servers/_page.py lists the document's fields, servers/_request.py
the limits. One exception, for measuring throughput: GET /bytes/N answers N generated
bytes (application/octet-stream, at most 1 GiB).

In-process use (the local data plane)::

    from servers.http_server import make_server
    server = make_server("127.0.0.1", 0)  # bound here: server.port is the real port
    server.start()                        # serve_forever() in a daemon thread
    ...
    server.stop()                         # shutdown(), server_close(), cut connections
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from ._cli import (
    StartupInterrupted,
    StopRequest,
    add_server_arguments,
    chosen_port,
    configure_logging,
    fail,
    limits_from,
    listening_line,
    serve_until_stopped,
    stopped_while_starting,
)
from ._http import BackendServer
from ._request import Limits

__all__ = ["DEFAULT_PORT", "main", "make_server"]

_log = logging.getLogger("servers.http_server")  # __name__ is "__main__" under -m
PROG = "http_server"
DEFAULT_PORT = 8080
DESCRIPTION = (
    "The plain HTTP backend: a generated page for GET, HEAD and POST on any path, "
    "JSON with 'Accept: application/json'."
)


def make_server(
    address: str = "0.0.0.0",
    port: int = DEFAULT_PORT,
    *,
    limits: Optional[Limits] = None,
) -> BackendServer:
    """A bound, not yet serving, HTTP backend; OSError when the address is unusable."""
    return BackendServer(address, port, kind="http", limits=limits)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the server until SIGTERM or SIGINT: exit status 0; 2 when it cannot start."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    add_server_arguments(parser, DEFAULT_PORT)
    args = parser.parse_args(argv)
    port = chosen_port(parser, args, DEFAULT_PORT)
    stop = StopRequest().install()
    stop.watch_parent(args.parent_pid)
    configure_logging(args.verbose)
    try:
        with stop.starting():
            server = make_server(args.listen, port, limits=limits_from(args))
    except StartupInterrupted:
        return stopped_while_starting(stop)
    except OSError as error:
        return fail(PROG, f"cannot listen on {args.listen} port {port}: {error}")
    _log.info("HTTP server %s", listening_line(server))
    return serve_until_stopped(server, stop)


if __name__ == "__main__":
    sys.exit(main())
