"""EC2 user data: carries every server file, runs one service per target group, fits 16 KiB."""

import ast
import glob
import gzip
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from infra import user_data
from infra.network import Ec2Compute
from infra.provision import build
from infra.stack import DEFAULT_LISTENERS, Stack, TargetGroup
from infra.user_data import (
    INSTALL_DIRECTORY, USER_DATA_LIMIT, UserDataTooLargeError, render_script, render_user_data,
)

pytestmark = pytest.mark.unit

SERVERS = Path(user_data.__file__).resolve().parents[1] / "servers"
GROUPS = tuple(listener.target_group for listener in DEFAULT_LISTENERS)
_HEREDOC = re.compile(r"^cat > (\S+) <<'(\w+)'\n(.*?)\n\2$", re.MULTILINE | re.DOTALL)


def _shipped(script: str) -> dict[str, str]:
    """Files the script writes, by path under the install directory."""
    return {target: body for target, _, body in _HEREDOC.findall(script)}


def _code_only(tree: ast.AST) -> str:
    """The tree without docstrings and function annotations, which minify drops."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(
                    getattr(body[0], "value", None), ast.Constant) and isinstance(
                    body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
        if isinstance(node, ast.arg):
            node.annotation = None
    return ast.dump(tree)


def test_user_data_is_gzip_and_fits_the_ec2_limit():
    data = render_user_data(GROUPS, "abc123")
    assert data[:2] == b"\x1f\x8b", "cloud-init inflates user data that starts with gzip magic"
    assert len(data) <= USER_DATA_LIMIT, f"{len(data)} bytes; EC2 takes {USER_DATA_LIMIT}"
    assert gzip.decompress(data).decode().startswith("#!/bin/bash\n")


def test_user_data_carries_every_server_file_with_the_same_code():
    script = gzip.decompress(render_user_data(GROUPS, "abc123")).decode()
    shipped = _shipped(script)
    expected = sorted(f"{INSTALL_DIRECTORY}/servers/{p.relative_to(SERVERS).as_posix()}"
                      for p in SERVERS.rglob("*.py") if "__pycache__" not in p.parts)
    files = sorted(k for k in shipped if k.startswith(f"{INSTALL_DIRECTORY}/servers/"))
    assert files == expected
    for target in files:
        original = (SERVERS / target.split("/servers/", 1)[1]).read_text()
        assert _code_only(ast.parse(shipped[target])) == \
            _code_only(ast.parse(original)), f"{target} differs from its source"
        doc = ast.get_docstring(ast.parse(original))
        first = doc.splitlines()[0] if doc else None
        assert ast.get_docstring(ast.parse(shipped[target])) == first, \
            f"{target}: the module docstring's first line (the servers' --help text) must stay"


def test_one_service_per_target_group_runs_its_server_on_its_port():
    groups = GROUPS + (TargetGroup("TCP", 9000),)
    script = render_script(groups, "abc123")
    units = {Path(k).name: v for k, v in _shipped(script).items()
             if k.startswith("/etc/systemd/system/")}
    starts = sorted(re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)
                    for unit in units.values())
    assert starts == [
        "/usr/bin/python3 -m servers.http_server -l 0.0.0.0 -p 8080",
        "/usr/bin/python3 -m servers.http_server -l 0.0.0.0 -p 9000",
        "/usr/bin/python3 -m servers.https_server -l 0.0.0.0 -p 8443",
    ]
    assert all("DynamicUser=yes" in unit for unit in units.values())
    assert f"systemctl enable --now {' '.join(sorted(units, key=list(units).index))}" in script
    assert "22" not in re.findall(r"-p (\d+)", script)


def _python39() -> str | None:
    """A python3.9 that runs: the one on PATH, else a pyenv install (the shim may be off)."""
    candidates = [shutil.which("python3.9")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "pass"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return candidate
    return None


PYTHON39 = _python39()


@pytest.mark.skipif(PYTHON39 is None, reason="no working python3.9")
def test_shipped_servers_compile_under_python_3_9(tmp_path):
    shipped = _shipped(render_script(GROUPS, "abc123"))
    paths = []
    for target, body in shipped.items():
        if target.endswith(".py"):
            path = tmp_path / Path(target).name
            path.write_text(body + "\n")
            paths.append(str(path))
    result = subprocess.run([PYTHON39, "-m", "py_compile", *paths], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_shipped_http_server_serves_its_page(tmp_path):
    """The minified code still works: run the shipped HTTP server on loopback and GET /."""
    for target, body in _shipped(render_script(GROUPS, "abc123")).items():
        if target.startswith(f"{INSTALL_DIRECTORY}/servers/"):
            path = tmp_path / target[len(INSTALL_DIRECTORY) + 1:]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body + "\n")
    log_file = tmp_path / "server.log"
    with open(log_file, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "servers.http_server", "-l", "127.0.0.1", "-p", "0"],
            cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT)
    try:
        port = _listening_port(log_file, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/probe", timeout=5) as answer:
            page = answer.read().decode()
        assert answer.status == 200 and "<title>" in page and "/probe" in page, page
    finally:
        process.terminate()
        process.wait(timeout=10)


def _listening_port(log_file: Path, process: subprocess.Popen) -> int:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = re.search(r"listening on \S*?:(\d+)", log_file.read_text())
        if found:
            return int(found.group(1))
        assert process.poll() is None, log_file.read_text()
        time.sleep(0.02)
    raise AssertionError(f"server did not start: {log_file.read_text()}")


def test_oversized_servers_fail_with_a_clear_error():
    noise = secrets.token_hex(20000)  # random hex: gzip halves it at best
    sources = {"servers/big.py": f"DATA = {noise!r}\n".encode()}
    with pytest.raises(UserDataTooLargeError) as raised:
        render_user_data(GROUPS, "abc123", sources)
    message = str(raised.value)
    assert "EC2 accepts at most 16384 bytes" in message and "1 server files" in message


def test_oversized_servers_stop_the_build_before_any_create(clients, calls, tmp_path,
                                                            monkeypatch):
    noise = secrets.token_hex(20000)
    monkeypatch.setattr(user_data, "server_sources",
                        lambda: {"servers/big.py": f"DATA = {noise!r}\n".encode()})
    with pytest.raises(UserDataTooLargeError):
        build(Stack(), clients, Ec2Compute(), tmp_path / "s.json")
    assert calls.mutating == [] and not (tmp_path / "s.json").exists()
