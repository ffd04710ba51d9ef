"""Scenario 1: an LLM worker is SIGKILLed with jobs in flight; the other worker finishes them.

The killed worker's jobs hold leases that nobody renews; the sweeper puts them back to ``queued``
and they run again elsewhere. The broker's visibility timeout stays at 3600 s: recovery must not
wait for it. The 200 jobs are let onto the workers in one burst (consumers paused while they are
submitted), so that ``a`` has at least 20 calls in flight when it dies however slowly this box
serves the submits."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
from sqlalchemy import select

from llmq.models.tables import Attempt
from tests.faults.scenario import Scenario

pytestmark = [pytest.mark.integration, pytest.mark.faults]

JOBS = 200


def test_jobs_in_flight_on_a_sigkilled_worker_are_finished_by_the_other_worker(
    make_scenario: Callable[..., Scenario],
) -> None:
    scenario = make_scenario(latency_s=3.0, llm_workers=("a", "b"))
    report = scenario.burst_onto(("a", "b"), JOBS, in_flight_on="a", at_least=30)
    killed = scenario.worker_tags("a")

    sim_in_flight = scenario.sim_stats()["in_flight_by_model"].get(scenario.model.split("/", 1)[1], 0)
    scenario.signal_worker("a", signal.SIGKILL)
    assert scenario.wait_exit("a", timeout=10) == -signal.SIGKILL
    orphans = scenario.running_on("a")  # attempts that were running when the worker died

    scenario.check_invariants(
        report.accepted_ids,
        timeout=120,
        extra={"in_flight_on_killed_worker": len(orphans), "simulator_in_flight_at_kill": sim_in_flight},
    )

    assert len(orphans) >= 20, f"the kill caught at least 20 jobs in flight: {len(orphans)}"
    with scenario.db.session() as session:
        finishers = dict(
            session.execute(
                select(Attempt.job_id, Attempt.worker).where(
                    Attempt.job_id.in_(orphans), Attempt.outcome == "success"
                )
            ).all()
        )
    assert set(finishers) == orphans, "every orphaned job was finished"
    assert not set(finishers.values()) & killed, "…by another worker"
