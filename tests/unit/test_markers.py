"""The markers select what the README says they select: ``-m "not integration"`` is exactly the
unit tests (nothing running needed), ``-m "not faults"`` everything but the fault suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _collected(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [line for line in out.splitlines() if "::" in line]


def test_not_integration_selects_the_unit_tests_only() -> None:
    selected = _collected("-m", "not integration", "tests")
    assert selected, "the unit tests are selected"
    assert all(line.startswith("tests/unit/") for line in selected), [
        line for line in selected if not line.startswith("tests/unit/")
    ][:5]


def test_integration_and_faults_markers_follow_their_folders() -> None:
    integration = _collected("-m", "integration", "tests")
    assert any(line.startswith("tests/integration/") for line in integration)
    assert any(line.startswith("tests/faults/") for line in integration)
    assert not any(line.startswith("tests/unit/") for line in integration)
    assert {line.split("/")[1] for line in _collected("-m", "faults", "tests")} == {"faults"}
