"""Scenario 3: Postgres stops for ~10 s while submits arrive at ~20/s for ~25 s.

During the outage the API answers 503 with a JSON error (never a 500, an HTML page or a hung
connection); afterwards the service recovers by itself — no process is restarted — and every job
that was answered 202 completes."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.scenario import Scenario

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RATE = 20.0
DURATION_S = 28.0
OUTAGE_AT_S = 6.0
OUTAGE_S = 10.0
SETTLE_S = 3.0  # once Postgres accepts connections again, submits succeed again within this


def test_submits_during_a_postgres_outage_get_503_json_and_every_accepted_job_completes(
    make_scenario: Callable[..., Scenario],
) -> None:
    scenario = make_scenario(latency_s=0.3)
    load = scenario.submit_in_background(int(RATE * DURATION_S), rate_per_s=RATE, deadline_s=DURATION_S + 30)
    time.sleep(OUTAGE_AT_S)
    with scenario.postgres_down():
        down_from = time.time()
        time.sleep(OUTAGE_S)
        down_until = time.time()
    back_at = time.time()

    report = load.result(timeout=DURATION_S + 60)
    during = [s for s in report.results if down_from <= s.sent_at <= down_until]
    after = [s for s in report.results if s.sent_at >= back_at + SETTLE_S]
    refused = report.refused
    bad_refusals = [
        (s.index, s.status, s.error_type or s.error or str(s.body)[:80])
        for s in refused
        if s.status != 503 or not s.error_type
    ]
    scenario.check_invariants(
        report.accepted_ids,
        timeout=120,
        expect_completed=True,
        extra={
            "outage_s": round(down_until - down_from, 1),
            "submits_during_outage": len(during),
            "refused_during_outage": sum(1 for s in during if not s.accepted),
            "submits_after_recovery": len(after),
            "refused_after_outage": sum(
                1 for s in report.results if s.sent_at > down_until and not s.accepted
            ),
            "last_refusal_after_postgres_back_s": round(
                max((s.sent_at - back_at for s in refused if s.sent_at > down_until), default=0.0), 1
            ),
            "refusals_not_503_json": len(bad_refusals),
        },
    )
    assert not scenario.exited(), f"no process of the stack died or was restarted: {scenario.exited()}"
    assert during and all(not s.accepted for s in during), "nothing can be accepted without the database"
    assert not bad_refusals, f"every refusal is a 503 with a JSON error.type: {bad_refusals[:10]}"
    still_refused = [(s.index, s.status, s.error_type) for s in after if not s.accepted]
    assert after and not still_refused, f"the API recovers by itself: {still_refused[:10]}"
