"""The suite's own rules: one target marker per test, strict markers, and .ci/run's verdict."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def run_pytest_with_the_real_rules(directory: Path, tests: str) -> subprocess.CompletedProcess:
    """pytest over TESTS in DIRECTORY, with this repository's pytest.ini and conftest.py."""
    shutil.copy(ROOT / "pytest.ini", directory / "pytest.ini")
    shutil.copy(ROOT / "conftest.py", directory / "conftest.py")
    (directory / "tests").mkdir()
    (directory / "tests" / "test_inner.py").write_text(textwrap.dedent(tests))
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
                          cwd=directory, env=environment, capture_output=True, text=True,
                          timeout=120)


def test_a_test_without_or_with_both_markers_is_a_usage_error_naming_it(tmp_path):
    done = run_pytest_with_the_real_rules(tmp_path, """
        import pytest

        @pytest.mark.unit
        def test_fine():
            pass

        def test_unmarked():
            pass

        @pytest.mark.unit
        @pytest.mark.e2e
        def test_both():
            pass
    """)
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, f"exit {done.returncode}:\n{output}"
    assert "tests/test_inner.py::test_unmarked (carries none)" in output, output
    assert "tests/test_inner.py::test_both (carries ['unit', 'e2e'])" in output, output
    assert "test_fine" not in output.split("these do not:")[-1], output


def test_a_mistyped_marker_fails_collection(tmp_path):
    done = run_pytest_with_the_real_rules(tmp_path, """
        import pytest

        @pytest.mark.unti
        def test_typo():
            pass
    """)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "'unti' not found in `markers`" in output, output


def fake_checkout(directory: Path, unit_status: int, e2e_status: int) -> Path:
    """Copies of .ci/run and .ci/test in DIRECTORY/.ci, beside an .ci/install that makes a
    `.venv/bin/python` whose `-m pytest -m unit ...` exits UNIT_STATUS and whose
    `-m pytest -m e2e` exits E2E_STATUS, logging each call (nothing is installed)."""
    ci = directory / ".ci"
    ci.mkdir()
    for name in ("run", "test"):
        shutil.copy(ROOT / ".ci" / name, ci / name)
    (ci / "install").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        set -e
        mkdir -p .venv/bin
        cat > .venv/bin/python <<'SHIM'
        #!/bin/sh
        echo "pytest $*" >> calls.log
        case "$*" in
          *"-m unit"*) exit {unit_status} ;;
          *) exit {e2e_status} ;;
        esac
        SHIM
        chmod +x .venv/bin/python
    """))
    (ci / "install").chmod(0o755)
    (directory / ".venv").mkdir()
    (directory / ".venv" / "stale").write_text("from an earlier install")
    return ci / "run"


@pytest.mark.parametrize(("unit_status", "e2e_status", "expected", "calls"), [
    (0, 0, 0, 2),
    (1, 0, 1, 1),  # the e2e suite does not run after a unit failure
    (0, 1, 1, 2),
    (2, 0, 2, 1),
    (5, 0, 1, 1),  # no unit test ran
    (0, 5, 1, 2),  # no e2e test ran
])
def test_ci_run_fails_when_a_test_failed_or_none_ran(tmp_path, unit_status, e2e_status,
                                                    expected, calls):
    script = fake_checkout(tmp_path, unit_status, e2e_status)
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == expected, (
        f"unit exit {unit_status}, e2e exit {e2e_status}: expected .ci/run to exit "
        f"{expected}, got {done.returncode}\n{done.stdout}{done.stderr}")
    logged = (tmp_path / "calls.log").read_text().splitlines()
    expected = ["pytest -m pytest -m unit -n 4 --dist loadfile", "pytest -m pytest -m e2e"]
    assert logged[:calls] == expected[:calls], logged
    assert len(logged) == calls, logged
    assert not (tmp_path / ".venv" / "stale").exists(), ".ci/run must start from a fresh venv"
    if unit_status == 5 or (unit_status == 0 and e2e_status == 5):
        assert "no test ran" in done.stderr, done.stderr
