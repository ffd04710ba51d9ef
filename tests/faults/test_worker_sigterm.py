"""Scenario 5: a deploy. Worker ``a`` gets SIGTERM with jobs in flight while worker ``c`` starts;
``b`` keeps running. Nothing is lost and nothing is done twice: each job has exactly one
successful attempt, and the simulator saw no call that llmq did not record.

The 200 jobs are let onto the workers in one burst (consumers paused while they are submitted),
so that ``a`` has at least 20 calls in flight when the SIGTERM comes."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from tests.faults.scenario import Scenario

pytestmark = [pytest.mark.integration, pytest.mark.faults]

JOBS = 200


def test_a_sigterm_deploy_mid_load_loses_nothing_and_duplicates_nothing(
    make_scenario: Callable[..., Scenario],
) -> None:
    scenario = make_scenario(latency_s=3.0, llm_workers=("a", "b"))
    report = scenario.burst_onto(("a", "b"), JOBS, in_flight_on="a", at_least=30)

    in_flight_at_sigterm = len(scenario.running_on("a"))
    scenario.signal_worker("a", signal.SIGTERM)
    scenario.start_worker("c", wait=False)
    exit_code = scenario.wait_exit("a", timeout=60)
    scenario.wait_worker_ready("c")

    scenario.check_invariants(
        report.accepted_ids,
        timeout=120,
        extra={"in_flight_at_sigterm": in_flight_at_sigterm, "sigterm_exit_code": exit_code},
    )
    assert in_flight_at_sigterm >= 20, "the deploy met a worker with calls in flight"
    assert exit_code == 0, "a warm shutdown ends cleanly"
