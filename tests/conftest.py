"""Shared test settings. Unit tests (tests/unit) need nothing running; integration tests
(tests/integration) need the machine's Postgres and Redis and start real processes themselves;
fault tests (tests/faults) kill, flush or stop them.

The markers follow the folders (a ``pytestmark`` in a conftest.py would mark nothing), so
``-m "not integration"`` runs exactly the unit tests and ``-m "not faults"`` skips the fault suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent
_MARKS = {"integration": ("integration",), "faults": ("integration", "faults")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = Path(item.path).relative_to(_HERE).parts[0]
        except ValueError:
            continue
        for mark in _MARKS.get(folder, ()):
            item.add_marker(getattr(pytest.mark, mark))
