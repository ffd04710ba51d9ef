"""The invariants every fault test ends with, checked job by job against the database, the API,
the webhook receiver and the simulator:

1. every accepted job reaches a final state (polled in Postgres, then read back through the API);
2. no accepted job is lost (each id exists);
3. each completed job has its result written exactly once: ``result_text`` set and exactly one
   attempt with outcome ``success`` (and a job that did not complete has none);
4. exactly one webhook event per job final state, delivered at least once; every delivery of an
   event carries the event's id as ``webhook-id``, the same body and a valid signature, and no job
   reached the receiver under two different ids;
5. the simulator saw no more requests for the test's model than there are attempt rows.

The figures go to the caller, to stdout, and as one JSON line to ``$LLMQ_FAULTS_REPORT`` if set;
the assertion comes last, so a failing run still leaves its figures behind.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from llmq.models.tables import Attempt, Job, WebhookDelivery, WebhookEvent
from llmq.webhooks import InvalidSignature, verify

if TYPE_CHECKING:
    from tests.faults.scenario import Scenario

FINAL = {"completed", "failed", "cancelled"}
MAX_PROBLEMS_SHOWN = 25


def _chunks(ids: list[str], size: int = 500) -> list[list[str]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def _statuses(scenario: Scenario, ids: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    with scenario.db.session() as session:
        for chunk in _chunks(ids):
            found.update(dict(session.execute(select(Job.id, Job.status).where(Job.id.in_(chunk))).all()))
    return found


def wait_final(scenario: Scenario, ids: list[str], timeout: float) -> dict[str, str]:
    """Poll Postgres until every id is in a final state, or the timeout; the last statuses seen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            statuses = _statuses(scenario, ids)
        except Exception:  # the database may be coming back
            statuses = {}
        if len(statuses) == len(ids) and all(s in FINAL for s in statuses.values()):
            return statuses
        if time.monotonic() > deadline:
            return statuses
        time.sleep(0.5)


def check_invariants(
    scenario: Scenario,
    accepted_ids: list[str],
    model: str,
    *,
    timeout: float = 120.0,
    delivery_timeout: float = 60.0,
    expect_completed: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    ids = list(dict.fromkeys(accepted_ids))
    problems: list[str] = []
    started = time.monotonic()

    # 1-2. final state, nothing lost -------------------------------------------------------------------
    statuses = wait_final(scenario, ids, timeout)
    seconds_to_final = round(time.monotonic() - started, 1)
    missing = [i for i in ids if i not in statuses]
    not_final = {i: s for i, s in statuses.items() if s not in FINAL}
    for job_id in missing:
        problems.append(f"lost: accepted job {job_id} is not in the database")
    if not_final:
        sample = dict(list(not_final.items())[:5])
        problems.append(
            f"{len(not_final)} accepted jobs not final after {timeout:.0f}s "
            f"({dict(Counter(not_final.values()))}), e.g. {sample}"
        )

    with scenario.db.session() as session:
        jobs = {
            row.id: row
            for chunk in _chunks(ids)
            for row in session.execute(
                select(
                    Job.id, Job.status, Job.result_text, Job.webhook_url, Job.error_type, Job.attempts
                ).where(Job.id.in_(chunk))
            ).all()
        }
        attempts = [
            row
            for chunk in _chunks(ids)
            for row in session.execute(
                select(Attempt.job_id, Attempt.number, Attempt.outcome, Attempt.worker).where(
                    Attempt.job_id.in_(chunk)
                )
            ).all()
        ]
        events = [
            row
            for chunk in _chunks(ids)
            for row in session.execute(
                select(WebhookEvent.id, WebhookEvent.job_id, WebhookEvent.type, WebhookEvent.status).where(
                    WebhookEvent.job_id.in_(chunk)
                )
            ).all()
        ]

    # 3. results written exactly once ----------------------------------------------------------------
    by_status = Counter(row.status for row in jobs.values())
    successes: Counter[str] = Counter(a.job_id for a in attempts if a.outcome == "success")
    written_twice = [j for j, n in successes.items() if n > 1]
    for job_id in written_twice:
        problems.append(f"duplicate effect: job {job_id} has {successes[job_id]} successful attempts")
    for job_id, row in jobs.items():
        if row.status == "completed":
            if row.result_text is None:
                problems.append(f"completed job {job_id} has no result_text")
            if successes[job_id] == 0:
                problems.append(f"completed job {job_id} has no successful attempt")
        elif successes[job_id]:
            problems.append(f"job {job_id} is {row.status} but has a successful attempt")
    if expect_completed:
        unfinished = {j: (r.status, r.error_type) for j, r in jobs.items() if r.status != "completed"}
        if unfinished:
            problems.append(
                f"{len(unfinished)} jobs did not complete: "
                f"{dict(Counter(unfinished.values()))}, e.g. {list(unfinished)[:5]}"
            )

    # 4. one event per final state, delivered, same id and body on every delivery --------------------
    events_by_job: defaultdict[str, list[Any]] = defaultdict(list)
    for event in events:
        events_by_job[event.job_id].append(event)
    expected_events: dict[str, Any] = {}
    for job_id, row in jobs.items():
        if row.status not in FINAL or not row.webhook_url:
            continue
        mine = events_by_job.get(job_id, [])
        if len(mine) != 1:
            problems.append(f"job {job_id} ({row.status}) has {len(mine)} webhook events, expected 1")
        for event in mine:
            if event.type != f"job.{row.status}":
                problems.append(f"job {job_id} is {row.status} but its event is {event.type}")
            expected_events[event.id] = event

    deadline = time.monotonic() + delivery_timeout
    while not set(expected_events) <= set(scenario.effects()) and time.monotonic() < deadline:
        time.sleep(0.5)
    effects = scenario.effects()
    undelivered = sorted(set(expected_events) - set(effects))
    if undelivered:
        with scenario.db.session() as session:
            states = Counter(
                session.scalars(
                    select(WebhookEvent.status).where(WebhookEvent.id.in_(undelivered[:500]))
                ).all()
            )
        problems.append(
            f"{len(undelivered)} webhook events never accepted by the receiver "
            f"(event states {dict(states)}), e.g. {undelivered[:3]}"
        )

    deliveries = scenario.deliveries()
    bodies: defaultdict[str, set[bytes]] = defaultdict(set)
    ids_by_job: defaultdict[str, set[str]] = defaultdict(set)
    bad_signatures = 0
    for delivery in deliveries:
        if delivery.webhook_id is None:
            problems.append(f"a delivery without webhook-id: {delivery.body[:120]!r}")
            continue
        bodies[delivery.webhook_id].add(delivery.body)
        try:
            payload = verify(scenario.tenant.webhook_secret, delivery.body, delivery.headers)
        except InvalidSignature:
            bad_signatures += 1
            payload = json.loads(delivery.body)
        job_id = payload.get("data", {}).get("id")
        ids_by_job[job_id].add(delivery.webhook_id)
        expected = expected_events.get(delivery.webhook_id)
        if expected is None:
            problems.append(f"delivery with webhook-id {delivery.webhook_id} that no final job's event has")
        elif expected.job_id != job_id or payload.get("type") != expected.type:
            problems.append(f"event {expected.id} delivered with the body of {job_id} {payload.get('type')}")
    if bad_signatures:
        problems.append(f"{bad_signatures} deliveries failed signature verification")
    differing = [wid for wid, b in bodies.items() if len(b) > 1]
    for wid in differing:
        problems.append(f"webhook-id {wid} was delivered with {len(bodies[wid])} different bodies")
    two_ids = {j: sorted(w) for j, w in ids_by_job.items() if len(w) > 1}
    for job_id, wids in two_ids.items():
        problems.append(f"duplicate effect: job {job_id} reached the receiver under ids {wids}")
    redelivered = sum(1 for n in Counter(d.webhook_id for d in deliveries if d.accepted).values() if n > 1)

    # 5. the simulator saw no call that llmq did not record -------------------------------------------
    bare = model.split("/", 1)[1]
    in_flight_deadline = time.monotonic() + 15
    stats = scenario.sim_stats()
    while stats.get("in_flight_by_model", {}).get(bare, 0) and time.monotonic() < in_flight_deadline:
        time.sleep(0.3)
        stats = scenario.sim_stats()
    sim_requests = int(stats["requests_by_model"].get(bare, 0))
    if sim_requests > len(attempts):
        problems.append(
            f"the simulator got {sim_requests} requests for {bare} "
            f"but only {len(attempts)} attempts are recorded"
        )

    # the API agrees with the database ----------------------------------------------------------------
    api_mismatch = _api_disagreements(scenario, {j: r.status for j, r in jobs.items()})
    if api_mismatch:
        problems.append(f"{len(api_mismatch)} jobs read differently through the API, e.g. {api_mismatch[:3]}")

    with scenario.db.session() as session:
        events_pending = 0
        for chunk in _chunks(list(expected_events)):
            events_pending += len(
                session.scalars(
                    select(WebhookEvent.id).where(
                        WebhookEvent.id.in_(chunk), WebhookEvent.status == "pending"
                    )
                ).all()
            )
        jobs_of_model = set(
            session.scalars(
                select(Job.id).where(Job.tenant_id == scenario.tenant.tenant_id, Job.model == model)
            ).all()
        )
        db_delivery_attempts = 0
        for chunk in _chunks(list(expected_events)):
            db_delivery_attempts += len(
                session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.event_id.in_(chunk))).all()
            )

    submissions = [s for load in scenario.loads for s in load.results]
    offered = len(submissions)
    figures: dict[str, Any] = {
        "scenario": scenario.name,
        "passed": not problems,
        "jobs_offered": offered,
        "jobs_accepted": len(ids),
        "jobs_refused": sum(1 for s in submissions if not s.accepted),
        "answers_by_status": dict(Counter(str(s.status) for s in submissions)),
        "jobs_completed": by_status.get("completed", 0),
        "jobs_failed": by_status.get("failed", 0),
        "jobs_cancelled": by_status.get("cancelled", 0),
        "jobs_not_final": len(not_final),
        "jobs_lost": len(missing) + len(not_final),
        # created in the database although the client was not told 202 (it saw an error instead)
        "jobs_created_but_refused": len(jobs_of_model - set(ids)),
        "faults_injected": len(scenario.faults),
        "faults": list(scenario.faults),
        "duplicate_effects": len(written_twice) + len(two_ids) + len(differing),
        "simulator_requests": sim_requests,
        "attempts": len(attempts),
        "attempts_by_outcome": dict(Counter(a.outcome for a in attempts)),
        "webhook_events": len(expected_events),
        "webhook_deliveries_received": len(deliveries),
        "webhook_effects": len(set(effects) & set(expected_events)),
        "webhook_redelivered_after_success": redelivered,
        "webhook_delivery_attempts_recorded": db_delivery_attempts,
        "webhook_events_still_pending_in_db": events_pending,
        "seconds_to_final": seconds_to_final,
        **(extra or {}),
        "problems": problems[:MAX_PROBLEMS_SHOWN],
    }
    _report(figures)
    assert not problems, f"{len(problems)} invariant violations:\n  " + "\n  ".join(
        problems[:MAX_PROBLEMS_SHOWN]
    )
    return figures


def _api_disagreements(scenario: Scenario, db_status: dict[str, str]) -> list[tuple[str, str, Any]]:
    with scenario.api_client() as client:

        def read(job_id: str) -> tuple[str, str, Any] | None:
            response = client.get(f"/v1/jobs/{job_id}")
            status = response.json().get("status") if response.status_code == 200 else response.status_code
            return None if status == db_status[job_id] else (job_id, db_status[job_id], status)

        with ThreadPoolExecutor(max_workers=8) as pool:
            return [r for r in pool.map(read, list(db_status)) if r is not None]


def _report(figures: dict[str, Any]) -> None:
    line = json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures}, sort_keys=False)
    print(f"\nfault figures: {line}")
    path = os.environ.get("LLMQ_FAULTS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")
