"""The sandbox's moto server, which also says when a request may have changed the stack."""

# The data plane reads its configuration through the APIs, as a poll of about ten describe
# calls. Polling every second to apply changes within two seconds costs about a twentieth
# of a core while nothing happens. Every change arrives as a request to this server, so the
# server tells the watcher after each request that is not a read, and the watcher polls at
# once; the slow regular poll only backs that up.
#
# Which requests are reads: the query (ELBv2, EC2, STS) and JSON (ACM) protocols name the
# operation, in the `Action` form field or the `X-Amz-Target` header; reads are the
# Describe*, List* and Get* operations. S3 requests name none and change nothing the data
# plane reads (log delivery reads the bucket policy itself, when it writes).

from __future__ import annotations

import io
import logging
import threading
from typing import Callable, Optional
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

__all__ = ["ControlPlaneServer", "operation_of", "is_change"]

logger = logging.getLogger(__name__)

_READS = ("Describe", "List", "Get")
_FORM = "application/x-www-form-urlencoded"
_MAX_FORM = 1 << 20  # query-protocol requests are small; a larger body is not read here


def operation_of(environ: dict) -> tuple[Optional[str], Optional[bytes]]:
    """The API operation a WSGI request names, and the body read to find it (to be put
    back), or (None, None) when it names none."""
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return target.rsplit(".", 1)[-1], None
    if not environ.get("CONTENT_TYPE", "").startswith(_FORM):
        query = parse_qs(environ.get("QUERY_STRING", ""))
        return (query.get("Action") or [None])[0], None
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None, None
    if not 0 < length <= _MAX_FORM:
        return None, None
    body = environ["wsgi.input"].read(length)
    action = parse_qs(body.decode("latin-1")).get("Action") or [None]
    return action[0], body


def is_change(operation: Optional[str]) -> bool:
    """Whether an operation may change what the data plane serves (anything but a read)."""
    return operation is not None and not operation.startswith(_READS)


class _NotifyOnChange:
    """WSGI middleware: runs moto's app, then calls `on_change` after every request whose
    operation is not a read (after moto has applied it, so a poll then sees it)."""

    def __init__(self, app, on_change: Callable[[], None]) -> None:
        self._app = app
        self.on_change = on_change

    def __call__(self, environ, start_response):
        operation, body = operation_of(environ)
        if body is not None:
            environ["wsgi.input"] = io.BytesIO(body)
        response = self._app(environ, start_response)
        if is_change(operation):
            self.on_change()
        return response


class ControlPlaneServer:
    """moto's server on 127.0.0.1 (a free port), in a thread; `on_change` may be set later.

    The same server as moto's ThreadedMotoServer, with the change notification in front.
    """

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        # Werkzeug logs every request to stderr, whatever moto's `verbose` says.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._app = _NotifyOnChange(DomainDispatcherApplication(create_backend_app), on_change)
        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self._app, threaded=True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-server",
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def notify_to(self, on_change: Callable[[], None]) -> None:
        """Call `on_change` after each request that may change the stack, from now on."""
        self._app.on_change = on_change

    def start(self) -> "ControlPlaneServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)
        self._server.server_close()
