"""Suite-wide rules: every test carries exactly one target marker, and nothing reaches AWS by
accident."""

import pytest

# The unit tests of the e2e plugin run pytest sessions of their own; pytest allows
# pytest_plugins only in the root conftest.
pytest_plugins = ["pytester"]

TARGET_MARKERS = ("unit", "e2e")


def pytest_collection_modifyitems(config, items):
    """Refuse a test that carries neither or both of the target markers.

    A test without one would silently run under every `-m` selection or under none, so the
    rule is enforced at collection, before anything runs, with the offending tests named.
    """
    offenders = []
    for item in items:
        carried = [name for name in TARGET_MARKERS if item.get_closest_marker(name)]
        if len(carried) != 1:
            offenders.append(f"{item.nodeid} (carries {carried or 'none'})")
    if offenders:
        raise pytest.UsageError(
            "every test must carry exactly one of the markers "
            f"{', '.join(TARGET_MARKERS)}; these do not:\n  " + "\n  ".join(offenders)
        )
