"""`pytest --fixtures` over the whole repository lists the e2e fixtures with their docstrings."""

import inspect
import re
import subprocess
import sys

import pytest

from fixtures import e2e
from fixtures.e2e_stack import ROOT

pytestmark = pytest.mark.unit

_E2E_FIXTURES = ("e2e_options", "e2e_progress", "e2e_stack", "tls_listener_ports",
                 "connection_registry", "conformance", "tls_listener", "traffic",
                 "our_backends", "tls_request", "local_backends")
_ENTRY = re.compile(r"^(\w+)(?: \[\w+ scope\])? -- (\S+)$")


def _listed(output: str) -> dict[str, str]:
    """Each fixture `pytest --fixtures` lists from fixtures/e2e.py, with its indented text."""
    listed, current = {}, None
    for line in output.splitlines():
        entry = _ENTRY.match(line)
        if entry:
            current = entry.group(1) if entry.group(2).startswith("fixtures/e2e.py:") else None
            if current:
                listed[current] = ""
        elif current and line.startswith("    "):
            listed[current] += line.strip() + " "
    return listed


def test_pytest_fixtures_over_the_repository_lists_every_e2e_fixture_with_its_docstring():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--fixtures", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, (
        f"expected `pytest --fixtures` to exit 0, got {done.returncode}:\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    listed = _listed(done.stdout)
    for name in _E2E_FIXTURES:
        first_line = inspect.getdoc(getattr(e2e, name)).splitlines()[0].strip()
        assert first_line in listed.get(name, ""), (
            f"expected `pytest --fixtures` to list {name} with its docstring {first_line!r}, "
            f"got {listed.get(name, 'no entry')!r}"
        )
    shared = done.stdout.count("\nmoto_backends [module scope] -- ")
    assert shared == 1, f"expected moto_backends listed once, got {shared} entries"
