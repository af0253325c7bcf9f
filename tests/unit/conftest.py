"""Fixtures every unit test module gets without importing them: moto, a loopback moto server,
AWS call recorders and a generated certificate chain (fixtures.moto), an S3 client on moto
for the log delivery tests (tests/unit/log_delivery_support.py)."""

# Registered here, once: a fixture function imported into several test modules is
# registered once per module, and `pytest --fixtures` then sorts registrations that can
# compare two FixtureDef objects, which crashes (pytest-dev/pytest #1651).

from fixtures.moto import (  # noqa: F401  (fixtures, registered for tests/unit)
    calls,
    clients,
    module_clients,
    moto_backends,
    moto_server,
    test_chain_files,
)
from tests.unit.log_delivery_support import _moto_s3, s3  # noqa: F401  (fixtures)
