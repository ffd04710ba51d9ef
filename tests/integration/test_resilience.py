"""Provider resilience across a fleet of four real worker processes sharing Redis: rate limits,
concurrency caps, circuit breakers with fallbacks, context-window fallbacks, long waits that park
the job, waiting for capacity in line order, the response cache, automatic routing and degraded
answers.

This module runs its own workers (and its own Redis database) with a providers file written for
these tests, so that the session's worker, which has no limits, never takes these jobs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from llmq.api.app import create_app
from llmq.config.providers_file import ProvidersConfig
from llmq.config.settings import Settings
from llmq.models.base import utcnow
from llmq.models.db import Database
from llmq.models.tables import Attempt, Job
from llmq.tasks.app import configure_celery
from llmq.workers.ratelimit import RPM_WAIT_WINDOWS_MAX, RateLimiter
from tests.integration.conftest import SimulatorControl, wait_for_status
from tests.integration.services import celery_worker_argv, settings_env, start_process, stop_process, wait_for

RUN = uuid.uuid4().hex[:6]
M = {
    name: f"openai/{name}-{RUN}"
    for name in "limited fifo capped primary backup small large parked cached down".split()
}
WINDOW_S = 5
RPM = 40  # per WINDOW_S (the limiter adds its 1 s margin)
FIFO_RPM = 6
MAX_COUNTDOWN_S = (WINDOW_S + 1.0) * RPM_WAIT_WINDOWS_MAX + 3.0


def _providers_file(path: Path) -> Path:
    path.write_text(
        f"""
[limits]
window_s = {WINDOW_S}
lease_s = 10

[breaker]
failures = 3
cooldown_s = 3
min_calls = 1000

[cache]
ttl_s = 600

[routing]
small_model = "{M["small"]}"
large_model = "{M["large"]}"
long_prompt_chars = 2000

[models."{M["limited"]}"]
rpm = {RPM}

[models."{M["fifo"]}"]
rpm = {FIFO_RPM}

[models."{M["capped"]}"]
concurrency = 5

[models."{M["primary"]}"]
fallbacks = ["{M["backup"]}"]

[models."{M["small"]}"]
context_window = 1000
fallbacks = ["{M["large"]}"]

[models."{M["large"]}"]
context_window = 100000
"""
    )
    return path


@pytest.fixture(scope="module")
def fleet_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    providers = _providers_file(tmp_path_factory.mktemp("providers") / "providers.toml")
    redis_url = settings.broker_url.rsplit("/", 1)[0] + "/13"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    # Every rate-limit wait (a job far back in a line waits up to RPM_WAIT_WINDOWS_MAX windows of
    # WINDOW_S + 1 s) rides a countdown on this fleet's broker. A wait parked in the database
    # could be enqueued by the session worker's sweeper (it shares the database) onto that
    # worker, which knows none of these limits.
    return settings.model_copy(
        update={"redis_url": redis_url, "providers_file": providers, "max_countdown_s": MAX_COUNTDOWN_S}
    )


@pytest.fixture(scope="module")
def fleet(
    fleet_settings: Settings, database: Database, simulator: str, logs_dir: Path
) -> Iterator[list[str]]:
    """Four worker processes (one also runs beat) sharing the limits through Redis."""
    env = {
        **settings_env(fleet_settings),
        "LLMQ_PROVIDERS_FILE": str(fleet_settings.providers_file),
        "LLMQ_MAX_COUNTDOWN_S": str(fleet_settings.max_countdown_s),
    }
    names = [f"fleet{i}-{RUN}@127.0.0.1" for i in range(4)]
    procs = []
    for i, name in enumerate(names):
        beat = logs_dir / "fleet-beat-schedule" if i == 0 else None
        argv = celery_worker_argv(name, concurrency=10, beat_schedule=beat)
        procs.append(start_process(argv, env, logs_dir / f"fleet{i}.log"))
    app = configure_celery(fleet_settings)
    try:
        wait_for(
            lambda: len(app.control.ping(destination=names, timeout=1.0)) == 4, timeout=60, what="4 workers"
        )
        yield names
    finally:
        for proc in procs:
            stop_process(proc)
        configure_celery(fleet_settings.model_copy(update={"redis_url": fleet_settings.redis_url}))


@pytest.fixture(scope="module")
def fleet_app(fleet_settings: Settings, fleet: list[str]) -> Iterator[Flask]:
    app = create_app(fleet_settings)
    yield app
    app.extensions["llmq.db"].dispose()


@pytest.fixture
def fclient(fleet_app: Flask) -> FlaskClient:
    return fleet_app.test_client()


def _bare(model: str) -> str:
    return model.split("/", 1)[1]


def _submit(client: FlaskClient, auth: dict[str, str], n: int, **body: Any) -> list[str]:
    ids = []
    for i in range(n):
        response = client.post("/v1/jobs", json={"prompt": f"job {i}", **body}, headers=auth)
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
    return ids


def _all_final(
    client: FlaskClient, auth: dict[str, str], ids: list[str], timeout: float
) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        jobs = [client.get(f"/v1/jobs/{i}", headers=auth).get_json() for i in ids]
        return jobs if all(j["status"] in {"completed", "failed", "cancelled"} for j in jobs) else None

    return wait_for(check, timeout=timeout, interval=0.5, what=f"{len(ids)} jobs to end")


def test_rpm_limit_holds_across_four_workers_and_the_provider_sees_no_429(
    fclient: FlaskClient, auth: dict[str, str], sim: SimulatorControl
) -> None:
    # Warm the fleet first (each process's first calls set up its HTTP connections), so that what
    # is measured is the limiter's steady state.
    _all_final(fclient, auth, _submit(fclient, auth, 40, model=M["capped"].replace("capped", "warm")), 60)
    ids = _submit(fclient, auth, 200, model=M["limited"])
    jobs = _all_final(fclient, auth, ids, timeout=120)
    assert {j["status"] for j in jobs} == {"completed"}
    records = httpx.get(f"{sim.url}/_sim/requests", params={"model": _bare(M["limited"])}).json()["data"]
    assert len(records) >= 200
    assert not [r for r in records if r["status"] == 429], "the provider had to refuse calls: we overshot"
    starts = sorted(r["started_at"] for r in records)
    # No window of WINDOW_S seconds holds more than RPM requests (a small allowance for the time a
    # request takes to travel from the admission, on Redis' clock, to the simulator).
    counts = [sum(1 for t in starts[i:] if t < start + WINDOW_S - 0.05) for i, start in enumerate(starts)]
    worst = max(counts)
    at = counts.index(worst)
    window = [round(t - starts[at], 3) for t in starts[at : at + worst]]
    assert worst <= RPM, f"{worst} requests in a {WINDOW_S}s window, limit {RPM}: {window}"
    assert any(j["attempts"] == 1 for j in jobs)


def _admitted(client: redis.Redis, model: str, count: int) -> bool:
    return bool(client.zcard(f"llmq:rl:{model}:log") == count)


def test_jobs_waiting_for_the_window_start_in_the_order_they_joined_the_line(
    fclient: FlaskClient,
    auth: dict[str, str],
    sim: SimulatorControl,
    database: Database,
    fleet_settings: Settings,
) -> None:
    model = M["fifo"]
    rl = redis.Redis.from_url(fleet_settings.broker_url)
    # Fill the window with admissions 0.4 s apart, so that its requests come back one at a time.
    fill = []
    for n in range(1, FIFO_RPM + 1):
        fill += _submit(fclient, auth, 1, model=model)
        wait_for(partial(_admitted, rl, model, n), what=f"{n} admissions")
        time.sleep(0.4)
    # Then jobs that all have to wait, a little apart; the line, as Redis holds it, is the order
    # in which they joined (their first refusal).
    waiting = []
    for _ in range(FIFO_RPM):
        waiting += _submit(fclient, auth, 1, model=model)
        time.sleep(0.1)

    def full_line() -> list[str] | None:
        ids = RateLimiter(rl, ProvidersConfig()).line(model)
        return ids if len(ids) == FIFO_RPM else None

    line = wait_for(full_line, what="every waiting job in the line")
    rl.close()
    assert set(line) == set(waiting)

    jobs = _all_final(fclient, auth, fill + waiting, timeout=60)
    assert {j["status"] for j in jobs} == {"completed"}
    with database.session() as session:
        started = {
            a.job_id: a.started_at
            for a in session.query(Attempt).filter(Attempt.job_id.in_(waiting), Attempt.outcome == "success")
        }
    assert sorted(waiting, key=started.__getitem__) == line, "a waiting job was overtaken"
    records = httpx.get(f"{sim.url}/_sim/requests", params={"model": _bare(model)}).json()["data"]
    assert len(records) == 2 * FIFO_RPM
    assert not [r for r in records if r["status"] == 429]


def test_concurrency_cap_is_never_exceeded(
    fclient: FlaskClient, auth: dict[str, str], sim: SimulatorControl
) -> None:
    sim.script(_bare(M["capped"]), [], default={"fault": "ok", "latency": 0.3})
    httpx.post(f"{sim.url}/_sim/stats/reset")
    ids = _submit(fclient, auth, 100, model=M["capped"])
    jobs = _all_final(fclient, auth, ids, timeout=120)
    assert {j["status"] for j in jobs} == {"completed"}
    peak = sim.stats()["peak_in_flight_by_model"].get(_bare(M["capped"]), 0)
    assert 1 <= peak <= 5, f"peak in flight {peak}, cap 5"


def test_open_breaker_sends_jobs_to_the_fallback_then_a_probe_brings_traffic_back(
    fclient: FlaskClient, auth: dict[str, str], sim: SimulatorControl
) -> None:
    primary = _bare(M["primary"])
    sim.script(primary, [], default={"fault": "500"})
    first = _submit(fclient, auth, 10, model=M["primary"])
    jobs = _all_final(fclient, auth, first, timeout=60)
    assert {j["status"] for j in jobs} == {"completed"}
    assert {j["served_by"] for j in jobs} == {M["backup"]}
    hits_while_open = sim.requests_for(primary)
    assert 3 <= hits_while_open <= 3 + 10, hits_while_open  # opened after 3 failures (plus calls in flight)
    more = _submit(fclient, auth, 10, model=M["primary"])
    assert {j["served_by"] for j in _all_final(fclient, auth, more, timeout=60)} == {M["backup"]}
    assert sim.requests_for(primary) == hits_while_open, (
        "calls reached the primary while its breaker was open"
    )
    providers = {p["model"]: p for p in fclient.get("/v1/providers", headers=auth).get_json()["data"]}
    assert providers[M["primary"]]["breaker"]["state"] in {"open", "half_open"}

    sim.script(primary, [], default=None)  # the primary recovers; after the cooldown, one probe

    def back_on_primary() -> bool:
        job_id = _submit(fclient, auth, 1, model=M["primary"])[0]
        return wait_for_status(fclient, auth, job_id, {"completed"})["served_by"] == M["primary"]

    wait_for(back_on_primary, timeout=30, interval=1.0, what="traffic to return to the primary")
    assert sim.requests_for(primary) >= hits_while_open + 1


def test_context_length_error_moves_to_the_larger_window(
    fclient: FlaskClient, auth: dict[str, str], sim: SimulatorControl, database: Database
) -> None:
    sim.script(_bare(M["small"]), [{"fault": "400", "code": "context_length_exceeded"}])
    job_id = _submit(fclient, auth, 1, model=M["small"])[0]
    done = wait_for_status(fclient, auth, job_id, {"completed", "failed"})
    assert done["status"] == "completed" and done["served_by"] == M["large"]
    with database.session() as session:
        models = [a.model for a in session.query(Attempt).filter_by(job_id=job_id).order_by(Attempt.number)]
    assert models == [M["small"], M["large"]]


def test_long_retry_after_parks_the_job_without_holding_a_worker(
    fclient: FlaskClient, auth: dict[str, str], sim: SimulatorControl, database: Database
) -> None:
    sim.script(_bare(M["parked"]), [{"fault": "429", "retry_after": 120}])
    job_id = _submit(fclient, auth, 1, model=M["parked"])[0]
    parked = wait_for(
        lambda: (j := fclient.get(f"/v1/jobs/{job_id}", headers=auth).get_json())["wait_reason"] and j,
        what="the job to park",
    )
    assert parked["status"] == "queued" and parked["wait_reason"] == "rate_limited"
    wait = datetime.fromisoformat(parked["next_attempt_at"]) - utcnow()
    assert timedelta(seconds=100) < wait <= timedelta(seconds=125)
    with database.session() as session:
        stored = session.get(Job, job_id)
        assert stored is not None and stored.enqueued_at is None  # parked in the database, not a Celery ETA
    # Every worker slot is free: 40 other jobs (the fleet's whole concurrency) run meanwhile.
    others = _submit(fclient, auth, 40, model=M["capped"].replace("capped", "free"))
    assert {j["status"] for j in _all_final(fclient, auth, others, timeout=60)} == {"completed"}
    # A shortened clock: the wait is over. The sweeper resumes the job.
    with database.transaction() as session:
        session.execute(update(Job).where(Job.id == job_id).values(next_attempt_at=utcnow()))
    done = wait_for_status(fclient, auth, job_id, {"completed", "failed"}, timeout=30)
    assert done["status"] == "completed" and done["attempts"] == 2


def test_a_cache_hit_never_calls_the_provider(
    fclient: FlaskClient, auth: dict[str, str], sim: SimulatorControl
) -> None:
    body = {"model": M["cached"], "cache": True}
    first = wait_for_status(fclient, auth, _submit(fclient, auth, 1, **body)[0], {"completed"})
    calls = sim.requests_for(_bare(M["cached"]))
    second = wait_for_status(fclient, auth, _submit(fclient, auth, 1, **body)[0], {"completed"})
    assert sim.requests_for(_bare(M["cached"])) == calls
    assert second["cached"] is True and second["cost_usd"] == 0
    assert second["result"] == first["result"] and first["cached"] is False
    other_prompt = fclient.post("/v1/jobs", json={"prompt": "different", **body}, headers=auth).get_json()
    assert wait_for_status(fclient, auth, other_prompt["id"], {"completed"})["cached"] is False


def test_another_tenants_cached_answer_is_not_served(
    fclient: FlaskClient, auth: dict[str, str], sim: SimulatorControl, database: Database
) -> None:
    from llmq.models.tenants import create_key

    body = {"prompt": "tenant scoped", "model": M["cached"], "cache": True}
    wait_for_status(
        fclient, auth, fclient.post("/v1/jobs", json=body, headers=auth).get_json()["id"], {"completed"}
    )
    with database.transaction() as session:
        other = create_key(
            session, tenant_name=f"other-{uuid.uuid4().hex[:6]}", now=utcnow(), tier="unlimited"
        )
    other_auth = {"Authorization": f"Bearer {other.api_key}"}
    theirs = fclient.post("/v1/jobs", json=body, headers=other_auth).get_json()
    assert wait_for_status(fclient, other_auth, theirs["id"], {"completed"})["cached"] is False


def test_auto_routes_by_size_and_complexity(fclient: FlaskClient, auth: dict[str, str]) -> None:
    simple = fclient.post("/v1/jobs", json={"prompt": "Say hi", "model": "auto"}, headers=auth).get_json()
    hard = fclient.post(
        "/v1/jobs",
        json={"prompt": "Analyze and compare these two plans step by step", "model": "auto"},
        headers=auth,
    ).get_json()
    simple_done = wait_for_status(fclient, auth, simple["id"], {"completed"})
    hard_done = wait_for_status(fclient, auth, hard["id"], {"completed"})
    assert simple_done["model"] == "auto" and simple_done["served_by"] == M["small"]
    assert hard_done["served_by"] == M["large"]
    assert hard_done["route_reason"].startswith("auto:")


def test_degraded_answer_only_when_the_job_asks_for_it(
    fclient: FlaskClient, auth: dict[str, str], sim: SimulatorControl
) -> None:
    sim.script(_bare(M["down"]), [], default={"fault": "503"})
    with ThreadPoolExecutor(2) as pool:
        asked, plain = pool.map(
            lambda ok: _submit(fclient, auth, 1, model=M["down"], degraded_ok=ok)[0], [True, False]
        )
    asked_done = wait_for_status(fclient, auth, asked, {"completed", "failed"}, timeout=60)
    plain_done = wait_for_status(fclient, auth, plain, {"completed", "failed"}, timeout=60)
    assert asked_done["status"] == "completed" and asked_done["degraded"] is True
    assert asked_done["result"]["finish_reason"] == "degraded"
    assert plain_done["status"] == "failed" and plain_done["degraded"] is False


def test_providers_endpoint_shows_limits_breakers_and_latency(
    fclient: FlaskClient, auth: dict[str, str]
) -> None:
    body = fclient.get("/v1/providers", headers=auth).get_json()
    by_model = {p["model"]: p for p in body["data"]}
    limited = by_model[M["limited"]]
    assert limited["limits"]["rpm_limit"] == RPM
    assert limited["breaker"]["state"] == "closed"
    assert limited["latency_ms_p50"] is not None and limited["latency_ms_p95"] >= limited["latency_ms_p50"]
    assert limited["error_rate"] == 0
