"""Scenario 7: jobs submitted right as the LLM workers come up, and across a worker restart.

Issue 14: a job answered 202 right after the stack started sat ``queued`` for a minute beside an
idle worker; a SIGKILLed worker replaced by a new one (the Procfile's command) once left jobs
unfinished in time. Here submits run at a steady rate while:

1. the first LLM worker starts (no worker is up when the load begins: a stack start);
2. that worker is SIGKILLed with calls in flight and messages reserved, and a new worker is
   started with ``llmq worker --queues llm`` while the submits go on.

Every job must reach a final state once (the invariants), and no job may wait in ``queued``,
counting only the time some LLM worker was up, longer than the sweeper's bound:
``LLMQ_REQUEUE_AFTER_S + LLMQ_SWEEP_INTERVAL_S`` (the shipped 10 s + this suite's 1 s) plus the
lease of a job that was in flight on the killed worker, plus room for this 2-core box.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from llmq.config.settings import Settings
from llmq.models.tables import Attempt, Job
from tests.faults.scenario import Scenario
from tests.faults.stack import TIMINGS
from tests.integration.services import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RATE = 15.0
PER_PHASE = 150
REQUEUE_AFTER_S = Settings.model_fields["requeue_after_s"].default
BOUND_S = REQUEUE_AFTER_S + TIMINGS["sweep_interval_s"] + TIMINGS["lease_s"] + 10.0


def _waited_while_up(created: float, started: float, windows: list[tuple[float, float]]) -> float:
    """Seconds between ``created`` and ``started`` during which some LLM worker was up."""
    return sum(max(0.0, min(started, end) - max(created, begin)) for begin, end in windows)


def test_jobs_submitted_as_workers_come_up_and_across_a_restart_all_start_within_the_bound(
    make_scenario: Callable[..., Scenario],
) -> None:
    scenario = make_scenario(latency_s=1.0, llm_workers=())
    # 1. a stack start: the load begins before the first worker exists
    first = scenario.submit_in_background(PER_PHASE, rate_per_s=RATE)
    time.sleep(1.0)
    scenario.start_worker("a", wait=False)
    scenario.wait_worker_ready("a")
    a_up = time.time()
    first_report = first.result(timeout=120)

    # 2. a restart: SIGKILL with calls in flight, then the Procfile's command starts another
    second = scenario.submit_in_background(PER_PHASE, rate_per_s=RATE)
    wait_for(lambda: len(scenario.running_on("a")) >= 5, timeout=30, interval=0.05, what="calls on a")
    scenario.signal_worker("a", signal.SIGKILL)
    assert scenario.wait_exit("a", timeout=10) == -signal.SIGKILL
    killed_at = time.time()
    scenario.start_worker("b", wait=False)
    scenario.wait_worker_ready("b")
    b_up = time.time()
    second_report = second.result(timeout=120)

    accepted = first_report.accepted_ids + second_report.accepted_ids
    assert len(accepted) == 2 * PER_PHASE, "every submit is accepted"

    def first_starts() -> dict[str, tuple[datetime, datetime]] | None:
        with scenario.db.session() as session:
            rows = session.execute(
                select(Job.id, Job.created_at, func.min(Attempt.started_at))
                .join(Attempt, Attempt.job_id == Job.id)
                .where(Job.id.in_(accepted))
                .group_by(Job.id, Job.created_at)
            ).all()
        if len(rows) < len(accepted):
            return None
        return {job_id: (created, started) for job_id, created, started in rows}

    starts = wait_for(first_starts, timeout=120, interval=0.5, what="every job to start")
    windows = [(a_up, killed_at), (b_up, float("inf"))]
    waits = sorted(_waited_while_up(_unix(c), _unix(s), windows) for c, s in starts.values())
    worst = waits[-1]
    figures = {
        "waited_while_up_max_s": round(worst, 2),
        "waited_while_up_p99_s": round(waits[int(0.99 * (len(waits) - 1))], 2),
        "worker_a_ready_s_after_load": round(a_up - first_report.started_at, 1),
        "worker_b_ready_s_after_kill": round(b_up - killed_at, 1),
        "start_bound_s": BOUND_S,
    }
    scenario.check_invariants(accepted, timeout=120, extra=figures)
    assert worst <= BOUND_S, f"a job waited {worst:.1f} s with a worker up (bound {BOUND_S} s): {figures}"


def _unix(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
