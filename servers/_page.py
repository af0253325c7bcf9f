"""The generated answer of a backend: HTML for people, a JSON document for tests."""

from __future__ import annotations

import hashlib
import html
import json
from dataclasses import dataclass
from typing import Dict, Optional

from ._request import Request

__all__ = ["Connection", "Page", "TlsSession", "render", "wants_json"]

_TITLES = {"http": "HTTP server", "https": "HTTPS server for TLS"}


@dataclass(frozen=True)
class TlsSession:
    """What an accepted TLS connection negotiated; None where the client sent none."""

    version: str
    cipher: str
    server_name: Optional[str]
    alpn_protocol: Optional[str]


@dataclass(frozen=True)
class Connection:
    """One accepted connection as the server sees it.

    local_address is the server's own end of this connection: with a wildcard listen
    address, the interface address the client reached.
    """

    kind: str
    hostname: str
    listen_address: str
    listen_port: int
    local_address: str
    local_port: int
    client_address: str
    client_port: int
    tls: Optional[TlsSession]


@dataclass(frozen=True)
class Page:
    """An answer's body and the Content-Type that describes it."""

    content_type: str
    body: bytes


def wants_json(accept: Optional[str]) -> bool:
    """Whether an Accept value asks for application/json rather than HTML.

    JSON when application/json is listed with a non-zero q and text/html is not given a
    higher q; anything else (no Accept, */*, text/html) gets the HTML page.
    """
    weights: Dict[str, float] = {}
    for item in (accept or "").split(","):
        media_type, *parameters = [part.strip() for part in item.split(";")]
        weight = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights[media_type.lower()] = max(weight, weights.get(media_type.lower(), 0.0))
    json_weight = weights.get("application/json", 0.0)
    return json_weight > 0 and json_weight >= weights.get("text/html", 0.0)


def render(
    request: Request, body: bytes, connection: Connection, as_json: bool
) -> Page:
    """The page for a request; HEAD is rendered as GET, for GET's Content-Length."""
    method = "GET" if request.method == "HEAD" else request.method
    if as_json:
        document = _document(request, method, body, connection)
        text = json.dumps(document, indent=2) + "\n"
        return Page("application/json", text.encode("utf-8"))
    return Page("text/html; charset=utf-8", _html(request, method, body, connection))


def _document(
    request: Request, method: str, body: bytes, connection: Connection
) -> dict:
    headers: Dict[str, str] = {}
    for name, value in request.headers:
        # Repeated fields joined as RFC 9110, 5.3 allows; names keep the client's case.
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    tls = connection.tls
    return {
        "server": connection.kind,
        "hostname": connection.hostname,
        "listen_address": connection.listen_address,
        "listen_port": connection.listen_port,
        "local_address": connection.local_address,
        "local_port": connection.local_port,
        "client_address": connection.client_address,
        "client_port": connection.client_port,
        "method": method,
        "path": request.target,
        "http_version": request.version,
        "headers": headers,
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "tls": None if tls is None else {
            "version": tls.version,
            "cipher": tls.cipher,
            "server_name": tls.server_name,
            "alpn_protocol": tls.alpn_protocol,
        },
    }


def _html(request: Request, method: str, body: bytes, connection: Connection) -> bytes:
    title = _TITLES[connection.kind]
    rows = [
        ("Host name", connection.hostname),
        ("Server address", _address(connection.local_address, connection.local_port)),
        ("Request path", request.target),
    ]
    if connection.tls is not None:
        rows.append(("TLS", f"{connection.tls.version} {connection.tls.cipher}"))
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        f'<head><meta charset="utf-8"><title>{title}</title></head>',
        "<body>",
        f"<h1>{title}</h1>",
        "<dl>",
    ]
    lines += [f"<dt>{name}</dt><dd>{html.escape(value)}</dd>" for name, value in rows]
    lines.append("</dl>")
    if method == "POST":
        text = body.decode("utf-8", "replace")
        lines.append(f"<h2>Request body ({len(body)} bytes)</h2>")
        lines.append(f"<pre>{html.escape(text)}</pre>")
    lines += ["</body>", "</html>", ""]
    return "\n".join(lines).encode("utf-8")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
