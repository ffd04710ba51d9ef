"""Turn the JSON lines that the fault tests write to ``$LLMQ_FAULTS_REPORT`` into the figures
table of RELIABILITY.md::

    LLMQ_FAULTS_REPORT=/tmp/faults.jsonl .venv/bin/python -m pytest tests/faults -q
    .venv/bin/python -m tests.faults.report /tmp/faults.jsonl
"""

from __future__ import annotations

import json
import sys
from typing import Any

SCENARIOS = {
    "test_jobs_in_flight_on_a_sigkilled_worker_are_finished_by_the_other_worker": "1. worker SIGKILL",
    "test_jobs_queued_when_redis_restarts_empty_are_recovered_by_the_sweeper": "2. Redis restarted empty",
    "test_submits_during_a_postgres_outage_get_503_json_and_every_accepted_job_completes": (
        "3. Postgres outage"
    ),
    "test_every_event_is_delivered_once_the_receiver_is_back_with_one_webhook_id_per_event": (
        "4. webhook receiver down"
    ),
    "test_a_sigterm_deploy_mid_load_loses_nothing_and_duplicates_nothing": "5. SIGTERM deploy",
    "test_twenty_concurrent_duplicates_with_one_idempotency_key_create_one_job": "6. idempotent burst",
    "test_jobs_submitted_as_workers_come_up_and_across_a_restart_all_start_within_the_bound": (
        "7. workers coming up, restart"
    ),
}


def latest(path: str) -> dict[str, dict[str, Any]]:
    """The last figures of each scenario, with the outcome of the test that wrote them."""
    found: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                record = json.loads(line)
                if "test_outcome" in record:  # written after the figures of the same run
                    found.setdefault(record["scenario"], {}).update(record)
                else:
                    found[record["scenario"]] = record
    return found


def table(records: dict[str, dict[str, Any]]) -> str:
    rows = [
        "| Scenario | Test | Invariants | Jobs offered / accepted | Faults injected | Jobs lost"
        " | Duplicate effects | Simulator requests / attempts | Run at |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for test, label in SCENARIOS.items():
        r = records.get(test)
        if r is None or "jobs_offered" not in r:
            outcome = (r or {}).get("test_outcome", "not run")
            rows.append(f"| {label} | {outcome} | not reached | | | | | | |")
            continue
        outcome = r.get("test_outcome", "?")
        if r.get("failure"):
            outcome += ": " + r["failure"][:120].replace("|", "\\|")
        rows.append(
            f"| {label} | {outcome} | {'hold' if r['passed'] else 'violated'}"
            f" | {r['jobs_offered']} / {r['jobs_accepted']}"
            f" | {r['faults_injected']} ({'; '.join(r['faults']) or 'none'})"
            f" | {r['jobs_lost']} | {r['duplicate_effects']}"
            f" | {r['simulator_requests']} / {r['attempts']} | {r['at']} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(latest(sys.argv[1])))
