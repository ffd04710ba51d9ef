"""Scenario 2: 200 jobs wait on the broker with no LLM worker running; Redis is flushed and
restarted empty. The jobs are durable in Postgres, and the sweeper re-enqueues every ``queued``
job whose enqueue is older than ``LLMQ_REQUEUE_AFTER_S`` and that has not started."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from sqlalchemy import select

from llmq.models.tables import Job
from tests.faults.scenario import Scenario

pytestmark = [pytest.mark.integration, pytest.mark.faults]

JOBS = 200


def test_jobs_queued_when_redis_restarts_empty_are_recovered_by_the_sweeper(
    make_scenario: Callable[..., Scenario],
) -> None:
    scenario = make_scenario(latency_s=0.2, llm_workers=())
    report = scenario.submit_many(JOBS, rate_per_s=100)
    assert len(report.accepted_ids) == JOBS, f"every submit is accepted: {report.by_status()}"
    with scenario.db.session() as session:
        states = Counter(session.scalars(select(Job.status).where(Job.id.in_(report.accepted_ids))).all())
    assert states == {"queued": JOBS}, "nothing runs them yet"
    on_broker = scenario.redis_llen("llm")

    scenario.restart_redis_empty()
    scenario.start_worker("a")

    scenario.check_invariants(
        report.accepted_ids, timeout=90, extra={"messages_on_broker_before_flush": on_broker}
    )
    assert on_broker >= JOBS, "the jobs were on the broker when it lost them"
    assert not scenario.exited(), f"API, webhook worker and beat rode out the restart: {scenario.exited()}"
