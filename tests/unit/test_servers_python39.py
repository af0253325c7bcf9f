"""The backends stay within Python 3.9, the Python that Amazon Linux 2023 ships."""

from __future__ import annotations

import glob
import json
import os
import shutil
import ssl
import subprocess
import sys
import urllib.request
from typing import Optional

import pytest

from tests.unit.test_http_server import (
    IN_PROCESS_SCRIPT,
    REPO_ROOT,
    start_server,
    stop_cleanly,
)

pytestmark = pytest.mark.unit

TARGET = (3, 9)


def _python39() -> Optional[str]:
    """A working python3.9: the one on PATH, else a pyenv one (the shim may be off)."""
    pattern = os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")
    candidates = [shutil.which("python3.9")] + sorted(glob.glob(pattern))
    for candidate in filter(None, candidates):
        try:
            result = subprocess.run(
                [candidate, "-c", "import sys; print(tuple(sys.version_info[:2]))"],
                capture_output=True, text=True, timeout=20,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0 and result.stdout.strip() == str(TARGET):
            return candidate
    return None


PYTHON39 = _python39()
needs_python39 = pytest.mark.skipif(PYTHON39 is None, reason="no working python3.9")


def test_vermin_finds_nothing_newer_than_python_3_9():
    # vermin reads the source, so this holds even where no 3.9 interpreter is installed.
    result = subprocess.run(
        [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())",
         "--target=3.9-", "--no-tips", "--violations", "--processes=1", "servers/"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, f"vermin found code newer than 3.9:\n{report}"
    assert "Analyzing" in report, f"expected vermin to analyse servers/, got:\n{report}"


@needs_python39
def test_http_server_serves_under_python39():
    process = start_server("servers.http_server", "-p", "0", python=PYTHON39)
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{process.port}/py39", data=b"posted",
            headers={"Accept": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            document = json.load(response)
    finally:
        stop_cleanly(process)
    assert (document["server"], document["path"], document["body_length"]) == (
        "http", "/py39", 6), document


@needs_python39
def test_https_server_with_self_signed_certificate_serves_under_python39():
    process = start_server("servers.https_server", "-p", "0", python=PYTHON39)
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(f"https://127.0.0.1:{process.port}/py39-tls",
                                         headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            document = json.load(response)
    finally:
        stop_cleanly(process)
    assert document["server"] == "https" and document["tls"]["version"], document


@needs_python39
def test_mismatched_key_message_under_python39(tmp_path):
    files = {}
    for name in ("a", "b"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec",
             "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(tmp_path / f"{name}.key"),
             "-out", str(tmp_path / f"{name}.pem"), "-days", "1",
             "-subj", f"/CN={name}"],
            check=True, capture_output=True, timeout=30,
        )
        files[name] = tmp_path / name
    result = subprocess.run(
        [PYTHON39, "-m", "servers.https_server", "-l", "127.0.0.1", "-p", "0",
         "--cert", f"{files['a']}.pem", "--key", f"{files['b']}.key"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2, f"expected exit status 2, got {result.returncode}"
    assert "do not belong together" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@needs_python39
def test_make_server_in_process_under_python39():
    result = subprocess.run([PYTHON39, "-W", "error", "-c", IN_PROCESS_SCRIPT],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["document"]["path"] == "/in-process", outcome
    assert outcome["refused_after_stop"] is True, outcome
