"""Budgets reserved before the call, across a fleet of four real LLM worker processes sharing
Redis, with a webhook worker and beat (the sweeper): the hard stop under concurrency, per-user
budgets, waiting for the next period, the soft-threshold event sent once, the seed from the usage
rollup when Redis has lost the counters, and a killed worker's reservation expiring.

The module runs its own workers with a providers file that prices its models, on the Redis
database ``LLMQ_TEST_BUDGET_REDIS_URL`` (default: db 9 of the session's Redis) and a Postgres
database of their own, so the session's worker, which knows none of these prices, never takes
these jobs, and its sweeper never sends them to its broker."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import func, select, update

from llmq.api.app import create_app
from llmq.config.settings import Settings
from llmq.models.base import isoformat, utcnow
from llmq.models.db import Database
from llmq.models.migrate import recreate_database
from llmq.models.tables import Attempt, BudgetAlert, Job, Tenant, UsageRollup
from llmq.models.tenants import IssuedKey, create_key
from llmq.tasks.app import configure_celery
from llmq.workers.budgets import BudgetLedger, Scope, period_of, to_units, to_usd
from llmq.workers.keys import BUDGET_PREFIX
from tests.integration.conftest import SimulatorControl, wait_for_status
from tests.integration.services import (
    WebhookReceiver,
    settings_env,
    start_llm_worker,
    start_process,
    stop_process,
    wait_for,
)
from tests.sync import done

RUN = uuid.uuid4().hex[:6]
MODEL = f"openai/budget-{RUN}"
SLOW = f"openai/budget-slow-{RUN}"
# $10 and $30 per million tokens: 1 input token = 1,000 units of 1e-8 USD, 1 output token = 3,000.
INPUT_UNITS, OUTPUT_UNITS = 1000, 3000
PROMPT = "x" * 96  # llmq counts 3 + 4 + 24 = 31 prompt tokens; the simulator 24 + 3 = 27
MAX_TOKENS = 12  # the simulator answers 12 words, one completion token each
WORST = 31 * INPUT_UNITS + MAX_TOKENS * OUTPUT_UNITS  # what each call reserves
REAL = 27 * INPUT_UNITS + MAX_TOKENS * OUTPUT_UNITS  # what each call costs
FINAL = {"completed", "failed", "cancelled"}


def _providers_file(path: Path) -> Path:
    path.write_text(
        f"""
[models."{MODEL}"]
input_usd_per_mtok = 10
output_usd_per_mtok = 30

[models."{SLOW}"]
input_usd_per_mtok = 10
output_usd_per_mtok = 30
"""
    )
    return path


@pytest.fixture(scope="module")
def budget_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    providers = _providers_file(tmp_path_factory.mktemp("budget-providers") / "providers.toml")
    redis_url = os.environ.get("LLMQ_TEST_BUDGET_REDIS_URL") or settings.broker_url.rsplit("/", 1)[0] + "/9"
    # A generous provider timeout: a call timed out on a loaded machine is retried, which the
    # assertions allow, but each retry is one more reservation to reason about.
    database_url = settings.database_url + "_budget"
    recreate_database(database_url)
    return settings.model_copy(
        update={
            "redis_url": redis_url,
            "database_url": database_url,
            "providers_file": providers,
            "provider_timeout_s": 10.0,
        }
    )


@pytest.fixture(scope="module")
def database(budget_settings: Settings) -> Iterator[Database]:
    """This module's own database, in place of the session's: the session worker's sweeper never
    sees these jobs, so it never sends one (a killed worker's, say) to its own broker, where the
    session worker would run it against another Redis database's budget ledger."""
    db = Database(budget_settings.database_url)
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def fleet(
    budget_settings: Settings,
    database: Database,
    simulator: str,
    logs_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """Four LLM worker processes, a webhook worker and beat, sharing Redis and the database."""
    env = {"LLMQ_PROVIDERS_FILE": str(budget_settings.providers_file)}
    var = tmp_path_factory.mktemp("budget-var")
    hooks_name = f"budget-hooks-{RUN}@127.0.0.1"
    llmq = str(Path(sys.executable).parent / "llmq")
    side = {**settings_env(budget_settings), **env, "LLMQ_VAR_DIR": str(var)}
    procs = [
        start_process(
            [llmq, "worker", "--queues", "webhooks", "-n", hooks_name], side, logs_dir / "bhooks.log"
        ),
        start_process([llmq, "beat"], side, logs_dir / "budget-beat.log"),
    ]
    workers: dict[int, Any] = {}
    try:
        for i in range(4):
            proc = start_llm_worker(
                budget_settings, f"budget{i}-{RUN}@127.0.0.1", logs_dir / f"budget{i}.log", env
            )
            workers[proc.pid] = proc
        app = configure_celery(budget_settings)
        wait_for(lambda: app.control.ping(destination=[hooks_name], timeout=1.0), timeout=60, what=hooks_name)
        yield {"workers": workers}
    finally:
        for proc in [*workers.values(), *procs]:
            stop_process(proc)


@pytest.fixture(scope="module")
def budget_app(budget_settings: Settings, fleet: dict[str, Any]) -> Iterator[Flask]:
    app = create_app(budget_settings)
    app.testing = True
    yield app
    app.extensions["llmq.db"].dispose()


@pytest.fixture(scope="module")
def ledger(budget_settings: Settings) -> Iterator[BudgetLedger]:
    client = redis.Redis.from_url(budget_settings.broker_url)
    yield BudgetLedger(client)
    client.close()


def _tenant(database: Database, **columns: Any) -> tuple[IssuedKey, dict[str, str]]:
    with database.transaction() as session:
        issued = create_key(
            session, tenant_name=f"budget-{uuid.uuid4().hex[:8]}", now=utcnow(), tier="unlimited"
        )
        session.execute(update(Tenant).where(Tenant.id == issued.tenant_id).values(**columns))
    return issued, {"Authorization": f"Bearer {issued.api_key}"}


def _submit(app: Flask, auth: dict[str, str], model: str = MODEL, **fields: Any) -> str:
    body = {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, **fields}
    response = app.test_client().post("/v1/jobs", json=body, headers=auth)
    assert response.status_code in (200, 201, 202), response.get_json()
    return str(response.get_json()["id"])


def _statuses(database: Database, tenant_id: str) -> dict[str, int]:
    with database.session() as session:
        rows = session.execute(
            select(Job.status, func.count()).where(Job.tenant_id == tenant_id).group_by(Job.status)
        ).all()
    return {status: int(count) for status, count in rows}


def _wait_all_final(database: Database, tenant_id: str, jobs: int, timeout: float = 120) -> dict[str, int]:
    def check() -> dict[str, int] | None:
        counts = _statuses(database, tenant_id)
        return counts if sum(counts.get(s, 0) for s in FINAL) == jobs else None

    return wait_for(check, timeout=timeout, interval=0.25, what=f"{jobs} jobs to end")  # type: ignore[no-any-return]


def _scope(tenant_id: str, budget_units: int) -> Scope:
    return Scope("tenant", tenant_id, budget_units)


def _bare(model: str) -> str:
    return model.split("/", 1)[1]


# --- the hard stop ---------------------------------------------------------------------------------


def test_500_jobs_racing_a_budget_for_100_on_4_workers_never_overspend(
    budget_app: Flask, database: Database, ledger: BudgetLedger, sim: SimulatorControl
) -> None:
    budget = 100 * REAL
    issued, auth = _tenant(database, budget_usd=to_usd(budget))
    requests_before = sim.requests_for(_bare(MODEL))
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: _submit(budget_app, auth), range(500)))
    counts = _wait_all_final(database, issued.tenant_id, len(ids))

    with database.session() as session:
        jobs = session.execute(
            select(Job.id, Job.status, Job.error_type, Job.cost_usd).where(Job.tenant_id == issued.tenant_id)
        ).all()
        attempts = session.execute(
            select(Attempt.job_id, Attempt.outcome)
            .join(Job, Job.id == Attempt.job_id)
            .where(Job.tenant_id == issued.tenant_id)
        ).all()
    billed = Counter(a.job_id for a in attempts if a.outcome == "success")
    completed = [j for j in jobs if j.status == "completed"]
    failed = [j for j in jobs if j.status == "failed"]
    assert len(completed) + len(failed) == 500, counts
    # Each completed job was charged once, at the real cost of one call. (On a loaded machine a
    # call may time out first: that attempt is not billed, settled at 0, and retried.)
    assert all(billed[j.id] == 1 for j in completed)
    assert {to_units(j.cost_usd) for j in completed} == {REAL}
    # Each refused job was charged nothing; most were never called at all. The provider saw
    # exactly the attempts recorded.
    assert all(j.error_type == "budget_exceeded" and billed[j.id] == 0 for j in failed)
    assert sum(1 for j in failed if j.id not in {a.job_id for a in attempts}) >= len(failed) // 2
    assert sim.requests_for(_bare(MODEL)) - requests_before == len(attempts)
    # The spend never passes the budget by more than one call's (reserved - settled) difference...
    spent = sum(to_units(j.cost_usd) for j in completed)
    assert spent <= budget + (WORST - REAL)
    # ...and the budget is not left mostly unused: a refusal means less than one worst case was
    # left once the calls in flight had their worst case held.
    assert len(completed) >= budget // WORST - 8, len(completed)
    # Redis agrees with the database, and nothing is left held.
    assert ledger.balance(_scope(issued.tenant_id, budget), period_of("month", utcnow()))[:2] == (spent, 0)


def test_each_end_user_has_a_budget_of_their_own(budget_app: Flask, database: Database) -> None:
    # Room for a call once one was spent (REAL + WORST), not once two were (2 * REAL + WORST).
    _, auth = _tenant(database, user_budget_usd=to_usd(REAL + WORST + REAL // 2))
    client = budget_app.test_client()
    outcomes = []
    for user in ("alice", "alice", "alice", "bob"):
        job_id = _submit(budget_app, auth, user=user)
        outcomes.append(wait_for_status(client, auth, job_id, FINAL, timeout=60))
    assert [o["status"] for o in outcomes] == ["completed", "completed", "failed", "completed"]
    refused = outcomes[2]["error"]
    assert refused["type"] == "budget_exceeded"
    assert "user 'alice'" in refused["message"] and "needed $" in refused["message"]


def test_a_job_that_asked_to_wait_parks_until_the_next_period(budget_app: Flask, database: Database) -> None:
    _, auth = _tenant(database, budget_usd=to_usd(WORST), budget_period="day")
    client = budget_app.test_client()
    first = _submit(budget_app, auth, on_budget_exceeded="wait")
    assert wait_for_status(client, auth, first, FINAL, timeout=60)["status"] == "completed"
    second = _submit(budget_app, auth, on_budget_exceeded="wait")

    def parked() -> dict[str, Any] | None:
        body = client.get(f"/v1/jobs/{second}", headers=auth).get_json()
        return body if body["wait_reason"] == "budget" else None

    body = wait_for(parked, timeout=30, what="the job to park for the budget")
    assert body["status"] == "queued" and body["attempts"] == 0
    next_day = period_of("day", utcnow()).end
    assert datetime.fromisoformat(body["next_attempt_at"].replace("Z", "+00:00")) == next_day
    client.post(f"/v1/jobs/{second}/cancel", headers=auth)


def test_a_threshold_event_is_sent_once_however_many_settles_cross_it(
    budget_app: Flask, database: Database, webhook_receiver: WebhookReceiver
) -> None:
    path = f"/budget-{uuid.uuid4().hex[:8]}"
    budget = 24 * REAL
    issued, auth = _tenant(
        database,
        budget_usd=to_usd(budget),
        budget_thresholds=[0.5, 0.8],
        webhook_url=webhook_receiver.url(path),
    )
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: _submit(budget_app, auth), range(20)))
    counts = _wait_all_final(database, issued.tenant_id, len(ids))
    assert counts.get("completed") == 20  # 20 worst cases fit 24 real costs
    wait_for(lambda: len(webhook_receiver.for_path(path)) >= 2, timeout=30, what="two threshold events")
    with database.session() as session:
        alerts = session.scalars(select(BudgetAlert).where(BudgetAlert.tenant_id == issued.tenant_id)).all()
    assert sorted(a.threshold for a in alerts) == [0.5, 0.8]
    # A late duplicate would have come by now: the alerts are written, each event delivered once.
    wait_for(lambda: _delivered_events(database, issued.tenant_id) == 2, timeout=30, what="delivered")
    hooks = webhook_receiver.for_path(path)
    assert len(hooks) == 2
    payloads = sorted((hook.json() for hook in hooks), key=lambda p: p["data"]["threshold"])
    assert [p["type"] for p in payloads] == ["budget.threshold"] * 2
    first = payloads[0]["data"]
    assert first["scope"] == "tenant" and first["tenant_id"] == issued.tenant_id
    assert first["threshold"] == 0.5 and first["budget_usd"] == float(to_usd(budget))
    assert first["spent_usd"] >= 0.5 * float(to_usd(budget))
    assert first["period_start"] == isoformat(period_of("month", utcnow()).start)
    assert all("webhook-signature" in hook.headers for hook in hooks)
    # The jobs' own webhook views know nothing of the tenant's events.
    views = budget_app.test_client().get(f"/v1/jobs/{ids[0]}/webhooks", headers=auth).get_json()
    assert views["data"] == []


def _delivered_events(database: Database, tenant_id: str) -> int:
    from llmq.models.tables import WebhookEvent

    with database.session() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(WebhookEvent)
                .where(
                    WebhookEvent.tenant_id == tenant_id,
                    WebhookEvent.type == "budget.threshold",
                    WebhookEvent.status == "delivered",
                )
            )
            or 0
        )


def test_the_counter_is_seeded_from_the_usage_rollup_when_redis_lost_it(
    budget_app: Flask, database: Database, budget_settings: Settings
) -> None:
    budget = 10 * REAL
    issued, auth = _tenant(database, budget_usd=to_usd(budget))
    client = budget_app.test_client()
    row = UsageRollup(
        tenant_id=issued.tenant_id,
        day=utcnow().date(),
        model="earlier-calls",
        calls=95,
        cost_usd=to_usd(budget - REAL // 2),  # the database says almost all of it is spent
    )
    with database.transaction() as session:
        session.add(row)
    _forget_counters(budget_settings, issued.tenant_id)
    refused = wait_for_status(client, auth, _submit(budget_app, auth), FINAL, timeout=60)
    assert refused["status"] == "failed" and refused["error"]["type"] == "budget_exceeded"
    assert f"spent ${to_usd(budget - REAL // 2)}" in refused["error"]["message"]

    with database.transaction() as session:  # the operator refunded half of it
        session.execute(
            update(UsageRollup)
            .where(UsageRollup.tenant_id == issued.tenant_id)
            .values(cost_usd=to_usd(budget // 2))
        )
    _forget_counters(budget_settings, issued.tenant_id)  # Redis restarted
    ok = wait_for_status(client, auth, _submit(budget_app, auth), FINAL, timeout=60)
    assert ok["status"] == "completed"


def _forget_counters(settings: Settings, tenant_id: str) -> None:
    client = redis.Redis.from_url(settings.broker_url)
    try:
        for key in done(client.keys(f"{BUDGET_PREFIX}:tenant:{tenant_id}:*")):
            client.delete(key)
    finally:
        client.close()


# --- a worker killed mid-call (last: it leaves the fleet one worker short) ------------------------


def test_a_killed_workers_reservation_expires_and_frees_the_budget(
    budget_app: Flask,
    database: Database,
    ledger: BudgetLedger,
    sim: SimulatorControl,
    fleet: dict[str, Any],
) -> None:
    budget = 2 * WORST + WORST // 2
    issued, auth = _tenant(database, budget_usd=to_usd(budget))
    scope = _scope(issued.tenant_id, budget)
    client = budget_app.test_client()
    sim.script(_bare(SLOW), [{"fault": "ok", "latency": 1.8}], default=None)
    job_id = _submit(budget_app, auth, model=SLOW)

    def held() -> int:
        return ledger.balance(scope, period_of("month", utcnow()))[1]

    def holder() -> int | None:
        with database.session() as session:
            worker = session.scalar(select(Attempt.worker).where(Attempt.job_id == job_id))
        return int(worker.rsplit(":", 1)[1]) if worker is not None and held() == WORST else None

    pid = wait_for(holder, timeout=30, interval=0.02, what="the call to hold its reservation")
    assert pid in fleet["workers"], "the call runs in one of this module's workers"
    os.kill(pid, signal.SIGKILL)
    fleet["workers"][pid].wait(10)

    # Nobody settles the dead call: its reservation expires (the job itself is recovered by the
    # sweeper once its lease runs out, and tried again, holding a reservation of its own).
    first = wait_for_status(client, auth, job_id, FINAL, timeout=60)
    wait_for(lambda: held() == 0, timeout=60, interval=0.5, what="the dead reservation to expire")
    calls = 1 if first["status"] == "completed" else 0
    assert ledger.balance(scope, period_of("month", utcnow()))[0] == calls * REAL  # the retry's, only
    # The budget is whole again but for what was really spent: another call fits.
    after = wait_for_status(client, auth, _submit(budget_app, auth), FINAL, timeout=60)
    assert after["status"] == "completed"
    assert ledger.balance(scope, period_of("month", utcnow()))[:2] == ((calls + 1) * REAL, 0)
