"""Scenario 6: twenty clients send the same job with the same ``Idempotency-Key`` at the same
instant. One job is created; every client is told about that one job."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from llmq.models.tables import Job
from tests.faults.scenario import Scenario

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CLIENTS = 20


def test_twenty_concurrent_duplicates_with_one_idempotency_key_create_one_job(
    make_scenario: Callable[..., Scenario],
) -> None:
    scenario = make_scenario(latency_s=0.2)
    key = f"burst-{uuid.uuid4().hex}"

    load = scenario.submit_many(
        CLIENTS, rate_per_s=1000, idempotency_key=key, concurrency=CLIENTS, barrier=True
    )

    answers = load.by_status()
    assert all(s.accepted for s in load.results), f"every duplicate is answered 202 or 200: {answers}"
    assert answers.get("202") == 1, f"exactly one request created the job: {answers}"
    job_ids = {s.job_id for s in load.results if s.job_id}
    assert len(job_ids) == 1, f"every answer names the same job: {job_ids}"
    with scenario.db.session() as session:
        created = session.scalar(select(func.count()).select_from(Job).where(Job.model == scenario.model))
        with_key = session.scalar(select(func.count()).select_from(Job).where(Job.idempotency_key == key))
    assert (created, with_key) == (1, 1), "one row in the database"

    scenario.check_invariants(list(job_ids), extra={"concurrent_clients": CLIENTS, "answers": answers})
