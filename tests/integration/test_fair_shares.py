"""Fair shares in a model's wait line, end to end: real ``llmq worker`` processes, real Postgres
and Redis, the provider simulator over HTTP. Tenant A submits 2,000 jobs, then tenant B 20: B's
jobs finish long before A's backlog, and the provider never sees more requests than the model's
rpm. And a tenant's interactive jobs, submitted after its bulk backlog, finish before it.

This module has its own database and Redis database, so that no other worker (nor the session
worker's sweeper) ever takes these jobs: they must all go through the limits written here."""

from __future__ import annotations

import bisect
import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import func, select

from llmq.config.settings import Settings
from llmq.models.base import utcnow
from llmq.models.db import Database
from llmq.models.migrate import recreate_database
from llmq.models.records import NewJob
from llmq.models.submit import create_job
from llmq.models.tables import Job
from llmq.models.tenants import create_key
from llmq.tasks.app import configure_celery
from llmq.tasks.enqueue import enqueue_job
from llmq.workers.ratelimit import RPM_WAIT_WINDOWS_MAX
from tests.integration.conftest import SimulatorControl
from tests.integration.services import start_llm_worker, stop_process, wait_for

RUN = uuid.uuid4().hex[:6]
FAIR_MODEL = f"fair-{RUN}"
PRIORITY_MODEL = f"prio-{RUN}"
# Each model's limit, fleet-wide: RPM requests per WINDOW_S (the limiter counts over WINDOW_S + its
# 1 s margin), 20 calls a second for FAIR_MODEL (10 for PRIORITY_MODEL): slower than the workers
# read the broker's messages (each waiting job is one claim and one park, not a call), so that B's
# jobs reach the line while most of A's still wait. A job waiting for rpm is woken when its turn
# can come; one waiting for a concurrency slot polls (slots free at no known time), which on a
# shared 2-core box costs more wake-ups than the box has room for with 2,000 jobs in line: the
# order behind a concurrency cap is tested against Redis in tests/unit/test_fair_line.py.
WINDOW_S = 19
RPM = {"fair": 400, "prio": 200}
LATENCY_S = 0.1
WORKERS = 2


@pytest.fixture(scope="module")
def fair_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    providers = tmp_path_factory.mktemp("fair") / "providers.toml"
    providers.write_text(
        f"[limits]\nwindow_s = {WINDOW_S}\n\n"
        + "".join(
            f'[models."openai/{m}"]\nrpm = {RPM[m.split("-")[0]]}\n\n' for m in (FAIR_MODEL, PRIORITY_MODEL)
        )
    )
    redis_url = os.environ.get("LLMQ_TEST_FAIR_REDIS_URL") or settings.broker_url.rsplit("/", 1)[0] + "/8"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    database_url = settings.database_url + "_fair"
    recreate_database(database_url)
    # Every wait rides a broker countdown (no beat runs here to bring back a job parked in the
    # database): the longest is RPM_WAIT_WINDOWS_MAX limiter windows.
    yield settings.model_copy(
        update={
            "redis_url": redis_url,
            "database_url": database_url,
            "providers_file": providers,
            "max_countdown_s": RPM_WAIT_WINDOWS_MAX * (WINDOW_S + 1.0) + 5.0,
        }
    )
    configure_celery(settings)


@pytest.fixture(scope="module")
def fair_db(fair_settings: Settings) -> Iterator[Database]:
    db = Database(fair_settings.database_url)
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def fair_fleet(fair_settings: Settings, simulator: str, logs_dir: Path) -> Iterator[None]:
    env = {
        "LLMQ_PROVIDERS_FILE": str(fair_settings.providers_file),
        "LLMQ_MAX_COUNTDOWN_S": str(fair_settings.max_countdown_s),
    }
    procs = []
    try:
        for i in range(WORKERS):
            name = f"fair{i}-{RUN}@127.0.0.1"
            procs.append(start_llm_worker(fair_settings, name, logs_dir / f"fair{i}.log", env))
        configure_celery(fair_settings)  # enqueue_job sends to this module's broker
        yield
    finally:
        for proc in procs:
            stop_process(proc)


def _tenant(db: Database, name: str) -> str:
    with db.transaction() as session:
        return create_key(session, tenant_name=f"{name}-{RUN}", now=utcnow(), tier="unlimited").tenant_id


def _submit(db: Database, tenant_id: str, model: str, n: int, priority: str = "interactive") -> list[str]:
    """n jobs at once, as ``POST /v1/jobs`` stores and enqueues them (one transaction, so that
    2,000 of them take a second or two, not a minute)."""
    ids = []
    with db.transaction() as session:
        for i in range(n):
            new = NewJob(
                model=f"openai/{model}",
                messages=[{"role": "user", "content": f"{tenant_id} {priority} {i}"}],
                max_tokens=16,
                use_cache=False,
                priority=priority,
            )
            job, _ = create_job(session, tenant_id=tenant_id, new=new, now=utcnow(), max_attempts=5)
            ids.append(job.id)
    for job_id in ids:
        enqueue_job(job_id)
    return ids


def _completed_at(db: Database, ids: list[str], timeout: float) -> dict[str, datetime]:
    def all_ended() -> bool:
        with db.session() as session:
            ended = session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.id.in_(ids), Job.status.in_(["completed", "failed", "cancelled"]))
            )
        return ended == len(ids)

    wait_for(all_ended, timeout=timeout, interval=1.0, what=f"{len(ids)} jobs to end")
    with db.session() as session:
        rows = session.execute(select(Job.id, Job.status, Job.completed_at).where(Job.id.in_(ids))).all()
    assert {status for _, status, _ in rows} == {"completed"}
    return {job_id: at for job_id, _, at in rows if at is not None}


def _median(values: list[datetime]) -> datetime:
    return sorted(values)[len(values) // 2]


def _within_limits(sim: SimulatorControl, model: str) -> None:
    """The provider never saw more than the model's rpm in WINDOW_S (an allowance of half a second
    for the way from the admission, on Redis' clock, to the simulator, which on a loaded 2-core
    box can take longer than the limiter's 1 s margin), and never had to refuse a call."""
    records = httpx.get(f"{sim.url}/_sim/requests", params={"model": model}).json()["data"]
    assert not [r for r in records if r["status"] == 429]
    starts = sorted(r["started_at"] for r in records)
    worst = max(bisect.bisect_left(starts, t + WINDOW_S - 0.5) - i for i, t in enumerate(starts))
    rpm = RPM[model.split("-")[0]]
    assert worst <= rpm, f"{worst} requests in a {WINDOW_S}s window, limit {rpm}"


def _between(done: dict[str, datetime], ids: list[str], first: datetime, last: datetime) -> int:
    return sum(1 for i in ids if first < done[i] < last)


@pytest.mark.timeout(420)
def test_a_tenants_backlog_does_not_hold_back_another_tenant(
    fair_fleet: None, fair_db: Database, sim: SimulatorControl
) -> None:
    sim.script(FAIR_MODEL, [], default={"fault": "ok", "latency": LATENCY_S})
    httpx.post(f"{sim.url}/_sim/stats/reset")
    a, b = _tenant(fair_db, "fair-a"), _tenant(fair_db, "fair-b")
    a_ids = _submit(fair_db, a, FAIR_MODEL, 2000)
    b_ids = _submit(fair_db, b, FAIR_MODEL, 20)
    done = _completed_at(fair_db, a_ids + b_ids, timeout=400)
    a_done = sorted(done[i] for i in a_ids)
    b_first, b_last = min(done[i] for i in b_ids), max(done[i] for i in b_ids)
    a_before_b = sum(1 for t in a_done if t <= b_last)
    a_during_b = _between(done, a_ids, b_first, b_last)
    print(
        f"\nfair shares: B's 20 jobs all done after {a_before_b} of A's 2000 ({a_during_b} of A's "
        f"between B's first and last); B's last at +{(b_last - a_done[0]).total_seconds():.1f}s, "
        f"A's last at +{(a_done[-1] - a_done[0]).total_seconds():.1f}s (from A's first)"
    )
    # In one first-come line B's jobs would all finish after A's 2,000. Here they finish while
    # most of A's backlog still waits, taking every other turn (equal weights) once in line.
    # (How closely B's 20 follow each other depends on how fast the workers read past A's 2,000
    # broker messages, which the machine's load decides: printed above, not asserted.)
    assert a_before_b < 1000, f"B waited behind {a_before_b} of A's jobs"
    _within_limits(sim, FAIR_MODEL)
    assert sim.requests_for(FAIR_MODEL) == 2020


@pytest.mark.timeout(240)
def test_interactive_jobs_overtake_the_same_tenants_bulk_backlog(
    fair_fleet: None, fair_db: Database, sim: SimulatorControl
) -> None:
    sim.script(PRIORITY_MODEL, [], default={"fault": "ok", "latency": LATENCY_S})
    httpx.post(f"{sim.url}/_sim/stats/reset")
    tenant = _tenant(fair_db, "fair-prio")
    bulk = _submit(fair_db, tenant, PRIORITY_MODEL, 400, priority="bulk")
    interactive = _submit(fair_db, tenant, PRIORITY_MODEL, 10)
    done = _completed_at(fair_db, bulk + interactive, timeout=200)
    first, last = min(done[i] for i in interactive), max(done[i] for i in interactive)
    bulk_before = sum(1 for i in bulk if done[i] <= last)
    bulk_during = _between(done, bulk, first, last)
    print(
        f"\npriority: the 10 interactive jobs all done after {bulk_before} of the 400 bulk ones "
        f"({bulk_during} bulk between the first interactive and the last)"
    )
    # The first window's worth of bulk jobs (200) is admitted at once, before the interactive
    # jobs arrive (the window had room); after that the interactive jobs take the next turns
    # (quiet runs: all done after 206-210 bulk jobs, 4-7 bulk between the first and the last).
    # Asserted with room for a loaded box: well before the bulk backlog ends.
    assert bulk_before < 300, f"interactive work waited behind {bulk_before} bulk jobs"
    assert len(bulk) - bulk_before >= 100, "the interactive jobs finished with the bulk backlog"
    _within_limits(sim, PRIORITY_MODEL)
