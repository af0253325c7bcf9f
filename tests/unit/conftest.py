"""Fixtures every unit test module gets without importing them: moto, a loopback moto server,
AWS call recorders and a generated certificate chain (all from fixtures.moto)."""

# A fixture function imported into a test module is registered once more for that module.
# `pytest --fixtures` sorts the registrations by (length of the module's node id, module,
# location, name), and two modules whose paths have the same length then compare two
# FixtureDef objects, which crashes with a TypeError (pytest-dev/pytest #1651). So the shared
# fixtures are registered here once, and pytest_collectstart removes the copies that older
# modules still import from fixtures.moto before pytest scans the module.

import pytest

from fixtures.moto import (  # noqa: F401  (fixtures, registered for tests/unit)
    calls,
    clients,
    module_clients,
    moto_backends,
    moto_server,
    test_chain_files,
)

_SHARED = (calls, clients, module_clients, moto_backends, moto_server, test_chain_files)


def pytest_collectstart(collector: pytest.Collector) -> None:
    """Drop the shared fixtures a test module imported; this conftest provides them."""
    if not isinstance(collector, pytest.Module):
        return
    try:
        module = collector.obj
    except Exception:  # the module's own collection reports the import error
        return
    for name, value in list(vars(module).items()):
        if any(value is shared for shared in _SHARED):
            delattr(module, name)
