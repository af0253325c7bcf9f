"""EC2 user data that installs the project's `servers/` package and runs it under systemd.

The user data carries the servers' source itself, so an instance needs nothing from the
internet: Amazon Linux 2023 ships the Python 3.9 the servers are written for. The HTTPS server
makes its own throwaway certificate at start (the NLB does not validate target certificates),
so no key travels in the user data.

EC2 takes at most 16 KiB of user data, and the servers' source is several times that, so the
shell script is gzip-compressed as a whole (cloud-init recognises gzip user data and inflates
it before running it), and each file is shipped without its comments and docstrings but the
first line of the module's (`minify`; the servers print that line in `--help`).
"""

from __future__ import annotations

import ast
import functools
import gzip
import logging
from pathlib import Path

import servers
from infra.stack import StackConfigError, TargetGroup

__all__ = [
    "USER_DATA_LIMIT",
    "UserDataTooLargeError",
    "INSTALL_DIRECTORY",
    "server_sources",
    "minify",
    "render_script",
    "render_user_data",
    "service_name",
]

log = logging.getLogger(__name__)

# EC2 limits user data to 16 KiB in raw form (here: the gzip bytes), before the API's base64.
USER_DATA_LIMIT = 16 * 1024
INSTALL_DIRECTORY = "/opt/nlb-tls-suite"
SERVERS_DIRECTORY = Path(servers.__file__).parent
_MODULES = {"TCP": "servers.http_server", "TLS": "servers.https_server"}
_FILE_END = "NLB_TLS_SUITE_END_OF_FILE"
_UNIT_END = "NLB_TLS_SUITE_END_OF_UNIT"


class UserDataTooLargeError(StackConfigError):
    """The rendered user data exceeds EC2's 16 KiB limit."""


def server_sources(directory: Path = SERVERS_DIRECTORY) -> dict[str, bytes]:
    """Every `.py` file of the servers package, by path relative to its parent (`servers/x.py`)."""
    directory = Path(directory)
    found = {}
    for path in sorted(directory.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        found[f"servers/{path.relative_to(directory).as_posix()}"] = path.read_bytes()
    return found


@functools.lru_cache(maxsize=64)
def minify(source: bytes) -> bytes:
    """SOURCE without comments, function and class docstrings and function annotations, and
    with only the first line of its module docstring (the servers use that line as their
    `--help` description).

    The code is re-emitted by `ast.unparse`, so the result parses to the same tree but for
    those docstrings and annotations; only line numbers in tracebacks change.
    """
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if _docstring(node) is not None:
                node.body = node.body[1:] or [ast.Pass()]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # Nothing reads a function's annotations at run time (a dataclass's fields are
            # class-level annotations, which stay).
            node.returns = None
        if isinstance(node, ast.arg):
            node.annotation = None
    module_doc = _docstring(tree)
    if module_doc is not None:
        module_doc.value = module_doc.value.strip().splitlines()[0]
    return (ast.unparse(tree) + "\n").encode("utf-8")


def _docstring(node) -> ast.Constant | None:
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
            and isinstance(first.value.value, str):
        return first.value
    return None


def service_name(group: TargetGroup) -> str:
    """The systemd unit that serves target group GROUP, e.g. `nlb-tls-tcp8080.service`."""
    return f"nlb-tls-{group.key}.service"


def _unit(group: TargetGroup, run_id: str) -> str:
    module = _MODULES[group.protocol]
    # DynamicUser runs the server as a throwaway unprivileged user; the capability lets a
    # target port below 1024 still bind.
    return "\n".join([
        "[Unit]",
        f"Description=nlb-tls-suite {module} on {group.port} (run {run_id})",
        "After=network-online.target",
        "Wants=network-online.target",
        "[Service]",
        "DynamicUser=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        f"WorkingDirectory={INSTALL_DIRECTORY}",
        f"ExecStart=/usr/bin/python3 -m {module} -l 0.0.0.0 -p {group.port}",
        "Restart=always",
        "RestartSec=2",
        "[Install]",
        "WantedBy=multi-user.target",
    ])


def render_script(
    target_groups: tuple[TargetGroup, ...],
    run_id: str,
    sources: dict[str, bytes] | None = None,
) -> str:
    """The shell script for an instance serving every target group of the stack.

    It writes each (minified) server file with a quoted heredoc, then one systemd service per
    target group: the HTTP server for TCP groups, the HTTPS server for TLS groups, each on the
    group's port.
    """
    sources = server_sources() if sources is None else sources
    lines = [
        "#!/bin/bash",
        f"# nlb-tls-suite backends for run {run_id}: the servers/ package, one service per",
        "# target group. Needs only the python3 that Amazon Linux 2023 ships.",
        "set -euo pipefail",
    ]
    for name in sorted(sources):
        text = minify(sources[name]).decode("utf-8")
        if _FILE_END in text:
            raise StackConfigError(f"{name} contains the heredoc delimiter {_FILE_END}")
        target = f"{INSTALL_DIRECTORY}/{name}"
        lines += [f"install -d -m 0755 {target.rsplit('/', 1)[0]}",
                  f"cat > {target} <<'{_FILE_END}'", text.rstrip("\n"), _FILE_END]
    lines.append(f"chmod -R a+rX {INSTALL_DIRECTORY}")
    for group in target_groups:
        lines += [f"cat > /etc/systemd/system/{service_name(group)} <<'{_UNIT_END}'",
                  _unit(group, run_id), _UNIT_END]
    units = " ".join(service_name(group) for group in target_groups)
    lines += ["systemctl daemon-reload", f"systemctl enable --now {units}"]
    return "\n".join(lines) + "\n"


def render_user_data(
    target_groups: tuple[TargetGroup, ...],
    run_id: str,
    sources: dict[str, bytes] | None = None,
) -> bytes:
    """The user data: `render_script` gzip-compressed (reproducibly: no timestamp).

    Raises UserDataTooLargeError when it exceeds USER_DATA_LIMIT bytes.
    """
    sources = server_sources() if sources is None else sources
    script = render_script(target_groups, run_id, sources).encode("utf-8")
    data = gzip.compress(script, compresslevel=9, mtime=0)
    if len(data) > USER_DATA_LIMIT:
        raise UserDataTooLargeError(
            f"user data is {len(data)} bytes gzip-compressed ({len(script)} bytes of script, "
            f"{len(sources)} server files); EC2 accepts at most {USER_DATA_LIMIT} bytes: "
            "shrink the servers/ package"
        )
    log.debug("user data: %d bytes (%d uncompressed), %d server files",
              len(data), len(script), len(sources))
    return data
