"""A job answered 202 whose broker message is lost still starts, within the sweeper's bound.

Issue 14: a job sat ``queued`` with no attempt beside idle workers for a minute, and the sweeper
(then: re-send after 300 s) did not help. A message can be taken off the ``llm`` list and never
turn into a claim:

- a worker that reads another database took it (an LLM worker left running from an earlier stack,
  or a second installation pointed at the same Redis database): it finds no such job and acks;
- a worker died holding it: kombu keeps a reserved message in its ``unacked`` hash until the
  visibility timeout (3600 s) passes, and a BRPOP reply in the dead worker's socket is gone.

Both are reproduced here with real worker processes on a Redis database of this module's own.
The sweeper must send such a job again ``LLMQ_REQUEUE_AFTER_S + LLMQ_SWEEP_INTERVAL_S`` after its
turn (the defaults: 10 + 5 s; the sweeper runs every second here), and the job must still be run
once: one successful attempt, and no more provider calls than attempts.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from llmq.api.app import create_app
from llmq.config.settings import Settings
from llmq.models.db import Database
from llmq.models.migrate import recreate_database
from llmq.models.tables import Attempt, Job
from llmq.tasks.app import LLM_QUEUE, configure_celery
from tests.integration.conftest import DATABASE_URL, SimulatorControl, settle, unique_model, wait_for_status
from tests.integration.services import (
    celery_worker_argv,
    settings_env,
    start_llm_worker,
    start_process,
    stop_process,
    wait_for,
)
from tests.sync import done

JOBS = 20
REAL = f"real-{uuid.uuid4().hex[:6]}@127.0.0.1"
# The bound the sweeper promises with the shipped LLMQ_REQUEUE_AFTER_S (10 s) and this suite's
# 1 s sweep interval, plus room for a slow box. Before the fix a lost job waited 300 s.
BOUND_S = 10.0 + 1.0 + 25.0


@pytest.fixture(scope="module")
def lost_settings(settings: Settings) -> Settings:
    redis_url = settings.broker_url.rsplit("/", 1)[0] + "/11"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    # A database of its own too: the session worker's sweeper (it may be running, started by an
    # earlier module) would otherwise send these jobs to its broker and run them a second way.
    database_url = settings.database_url + "_lost"
    recreate_database(database_url)
    return settings.model_copy(
        update={
            "redis_url": redis_url,
            "database_url": database_url,
            # the shipped default, not a test value: the bound under test is the one users get
            "requeue_after_s": Settings.model_fields["requeue_after_s"].default,
        }
    )


@pytest.fixture(scope="module")
def database(lost_settings: Settings) -> Iterator[Database]:
    """This module's database, in place of the session's (see ``lost_settings``)."""
    db = Database(lost_settings.database_url)
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def real_worker(lost_settings: Settings, database: Database, simulator: str, logs_dir: Path) -> Iterator[str]:
    """The installation's own worker, with the sweeper (beat embedded)."""
    proc = start_process(
        celery_worker_argv(REAL, concurrency=4, beat_schedule=logs_dir / "lost-beat-schedule"),
        settings_env(lost_settings),
        logs_dir / "lost-real.log",
    )
    app = configure_celery(lost_settings)
    try:
        wait_for(lambda: app.control.ping(destination=[REAL], timeout=1.0), timeout=60, what=REAL)
        yield REAL
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def lost_app(settings: Settings, lost_settings: Settings, real_worker: str) -> Iterator[Flask]:
    app = create_app(lost_settings)
    yield app
    app.extensions["llmq.db"].dispose()
    configure_celery(settings)  # the session's broker again, for the modules after this one


@pytest.fixture
def broker(lost_settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(lost_settings.broker_url)
    yield client
    client.close()


def _pause(settings: Settings, node: str) -> None:
    app = configure_celery(settings)
    reply = app.control.cancel_consumer(LLM_QUEUE, destination=[node], reply=True, timeout=5)
    assert reply, f"{node} did not stop consuming"


def _resume(settings: Settings, node: str) -> None:
    app = configure_celery(settings)
    reply = app.control.add_consumer(LLM_QUEUE, destination=[node], reply=True, timeout=5)
    assert reply, f"{node} did not start consuming"


def _submit(client: FlaskClient, auth: dict[str, str], model: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        response = client.post("/v1/jobs", json={"prompt": f"lost {i}", "model": model}, headers=auth)
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
    return ids


def _assert_each_ran_once(db: Database, ids: list[str], sim: SimulatorControl, bare_model: str) -> None:
    with db.session() as session:
        successes = dict(
            session.execute(
                select(Attempt.job_id, func.count())
                .where(Attempt.job_id.in_(ids), Attempt.outcome == "success")
                .group_by(Attempt.job_id)
            ).all()
        )
        attempts = session.scalar(select(func.count()).select_from(Attempt).where(Attempt.job_id.in_(ids)))
    assert successes == {job_id: 1 for job_id in ids}, "each job has exactly one successful attempt"
    assert sim.requests_for(bare_model) <= (attempts or 0), "no provider call without its attempt"


def test_jobs_taken_by_a_worker_on_another_database_are_sent_again_and_run_once(
    lost_settings: Settings,
    lost_app: Flask,
    auth: dict[str, str],
    sim: SimulatorControl,
    broker: redis.Redis,
    database: Database,
    logs_dir: Path,
) -> None:
    foreign_url = DATABASE_URL.rsplit("/", 1)[0] + "/llmq_test_foreign"
    recreate_database(foreign_url)
    foreign_settings = lost_settings.model_copy(update={"database_url": foreign_url})
    foreign_node = f"foreign-{uuid.uuid4().hex[:6]}@127.0.0.1"
    foreign = start_llm_worker(foreign_settings, foreign_node, logs_dir / "lost-foreign.log")
    bare = unique_model("lost")
    model = f"openai/{bare}"
    client = lost_app.test_client()
    _pause(lost_settings, REAL)  # only the foreign worker consumes while the jobs are submitted
    try:
        ids = _submit(client, auth, model, JOBS)
        # The foreign worker takes every message, finds no such job in its database and acks it.
        wait_for(
            lambda: broker.llen(LLM_QUEUE) == 0 and broker.hlen("unacked") == 0,
            timeout=30,
            what="the foreign worker to take every message",
        )
    finally:
        stop_process(foreign)
        _resume(lost_settings, REAL)
    # The broker carries none of them now; the idle worker gets them only from the sweeper.
    jobs = [wait_for_status(client, auth, job_id, {"completed", "failed"}, timeout=BOUND_S) for job_id in ids]
    assert {job["status"] for job in jobs} == {"completed"}
    assert {job["attempts"] for job in jobs} == {1}
    _assert_each_ran_once(database, ids, sim, bare)
    # and the foreign worker said why it dropped them
    assert (logs_dir / "lost-foreign.log").read_text().count('"job_unknown"') >= JOBS


def test_jobs_reserved_by_a_sigkilled_worker_are_sent_again_without_waiting_for_the_visibility_timeout(
    lost_settings: Settings,
    lost_app: Flask,
    auth: dict[str, str],
    sim: SimulatorControl,
    broker: redis.Redis,
    database: Database,
    logs_dir: Path,
) -> None:
    bare = unique_model("reserved")
    model = f"openai/{bare}"
    sim.script(bare, [], default={"fault": "ok", "latency": 30})
    httpx.post(f"{sim.url}/_sim/stats/reset")
    doomed_node = f"doomed-{uuid.uuid4().hex[:6]}@127.0.0.1"
    # One call in flight at most: its other pool threads hold reserved messages, waiting for room.
    doomed = start_llm_worker(
        lost_settings,
        doomed_node,
        logs_dir / "lost-doomed.log",
        {"LLMQ_WORKER_MAX_IN_FLIGHT": "1", "LLMQ_PROVIDER_TIMEOUT_S": "60"},
    )
    client = lost_app.test_client()
    _pause(lost_settings, REAL)
    try:
        try:
            ids = _submit(client, auth, model, JOBS)
            wait_for(
                lambda: sim.stats()["in_flight_by_model"].get(bare, 0) == 1
                and done(broker.hlen("unacked")) >= 2,
                timeout=30,
                what="the doomed worker to run one call and hold reserved messages",
            )
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(10)
        finally:
            stop_process(doomed)
        sim.script(bare, [], default={"fault": "ok", "latency": 0.05})
        # Counted once the worker is dead: until then its pool threads may still be reserving.
        reserved = done(broker.hlen("unacked"))
        assert reserved >= 2
        settle(2 * lost_settings.sweep_interval_s)
        assert broker.hlen("unacked") == reserved, "the dead worker's reserved messages stay in 'unacked'"
    finally:
        _resume(lost_settings, REAL)  # whatever failed above, the next test gets a consuming worker
    timeout = BOUND_S + lost_settings.lease_s  # the call in flight comes back by its lease
    jobs = [wait_for_status(client, auth, job_id, {"completed", "failed"}, timeout=timeout) for job_id in ids]
    assert {job["status"] for job in jobs} == {"completed"}
    _assert_each_ran_once(database, ids, sim, bare)


def test_jobs_waiting_behind_a_backlog_are_not_sent_twice(
    lost_settings: Settings,
    lost_app: Flask,
    auth: dict[str, str],
    sim: SimulatorControl,
    broker: redis.Redis,
    database: Database,
) -> None:
    """The re-send follows the broker's line: jobs still waiting on the list, however long, are
    left alone (a blind "older than N seconds" rule would push a second copy of every one)."""
    bare = unique_model("backlog")
    client = lost_app.test_client()
    _pause(lost_settings, REAL)  # nobody consumes: the list is a backlog that does not move
    try:
        ids = _submit(client, auth, f"openai/{bare}", JOBS)
        waiting = broker.llen(LLM_QUEUE)
        assert waiting == JOBS
        with database.session() as session:
            sent = dict(session.execute(select(Job.id, Job.enqueued_at).where(Job.id.in_(ids))).all())
        # longer than the re-send delay, with a sweep every second meanwhile
        settle(lost_settings.requeue_after_s + 4 * lost_settings.sweep_interval_s)
        assert broker.llen(LLM_QUEUE) == waiting, "no second message for a job still in line"
        with database.session() as session:
            assert dict(session.execute(select(Job.id, Job.enqueued_at).where(Job.id.in_(ids))).all()) == sent
    finally:
        _resume(lost_settings, REAL)
    jobs = [wait_for_status(client, auth, job_id, {"completed", "failed"}, timeout=60) for job_id in ids]
    assert {job["status"] for job in jobs} == {"completed"}
    _assert_each_ran_once(database, ids, sim, bare)
