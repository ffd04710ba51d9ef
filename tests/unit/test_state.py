"""The job state machine: which transitions exist, and that a final state is never left."""

from __future__ import annotations

import pytest

from llmq.models.state import ALLOWED_TRANSITIONS, FINAL_STATUSES, JobStatus, can_transition


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("queued", "processing"),
        ("queued", "cancelled"),
        ("processing", "completed"),
        ("processing", "failed"),
        ("processing", "cancelled"),
        ("processing", "queued"),  # a retry waits in the queue again
    ],
)
def test_allowed_transitions(current: str, target: str) -> None:
    assert can_transition(current, target)


@pytest.mark.parametrize("final", sorted(FINAL_STATUSES))
@pytest.mark.parametrize("target", list(JobStatus))
def test_a_final_state_is_never_left(final: JobStatus, target: JobStatus) -> None:
    assert not can_transition(final, target)


@pytest.mark.parametrize(
    ("current", "target"), [("queued", "completed"), ("queued", "queued"), ("processing", "processing")]
)
def test_forbidden_transitions(current: str, target: str) -> None:
    assert not can_transition(current, target)


def test_every_status_has_rules_and_finality_is_consistent() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(JobStatus)
    for status in JobStatus:
        assert status.is_final == (not ALLOWED_TRANSITIONS[status])


def test_unknown_status_is_an_error() -> None:
    with pytest.raises(ValueError):
        can_transition("queued", "done")
