"""llmq behind Redis Sentinel, with a real Sentinel set started by the test: a master, a replica
and three Sentinels (quorum 2, master down after 1 s).

- A client built from ``REDIS_URL`` follows the master through a failover: a Lua script (the
  limiter's and breakers' kind) runs on the new master although its script cache is empty there,
  and writes go to the new master after the old one was demoted.
- The whole pipeline under load: the API in this process and real worker processes (one with the
  sweeper) on ``redis+sentinel://``, 300 jobs submitted at a steady pace against a simulator that
  answers in 0.2 s, the master SIGKILLed a third of the way in. The Sentinels promote the replica;
  every job answered 202 completes, each with exactly one successful attempt, and the provider
  was called no more times than there were attempts (no job ran twice for nothing).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from llmq.api.app import create_app
from llmq.config.settings import Settings
from llmq.models.db import Database
from llmq.models.tables import Attempt, Job
from llmq.tasks.app import configure_celery
from llmq.workers.redis_client import redis_client
from tests.integration.conftest import SimulatorControl, unique_model
from tests.integration.redis_nodes import SentinelSet, start_sentinel_set
from tests.integration.services import (
    celery_worker_argv,
    settings_env,
    start_llm_worker,
    start_process,
    stop_process,
    wait_for,
)
from tests.sync import done

JOBS = 300
KILL_AFTER = JOBS // 3
SUBMIT_PAUSE_S = 0.03


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[SentinelSet]:
    sentinel_set = start_sentinel_set(tmp_path / "redis")
    yield sentinel_set
    sentinel_set.stop()


@pytest.fixture
def sentinel_settings(settings: Settings, nodes: SentinelSet) -> Iterator[Settings]:
    # Re-send a lost message 3 s after its turn instead of 10 (the sweeper runs every second here).
    yield settings.model_copy(update={"redis_url": nodes.url(0), "requeue_after_s": 3.0})
    configure_celery(settings)  # the session's other tests publish to their own Redis again


def test_a_client_follows_the_master_through_a_failover_and_reloads_its_scripts(
    nodes: SentinelSet, sentinel_settings: Settings
) -> None:
    client = redis_client(sentinel_settings.redis_target)
    counter = client.register_script("return redis.call('INCR', KEYS[1])")
    assert counter(keys=["llmq:test:n"]) == 1
    old = nodes.master_port()
    # A planned failover: the old master stays up, demoted to a replica of the new one.
    nodes.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", "llmq-master")
    new = wait_for(lambda: nodes.master_port() if nodes.master_port() != old else None, what="the failover")
    wait_for(lambda: done(nodes.master.client().info("replication"))["role"] == "slave", what="the demotion")
    promoted = nodes.replica if nodes.replica.port == new else nodes.master
    promoted.client().script_flush()  # whatever the new master had cached, it has nothing now
    assert counter(keys=["llmq:test:n"]) == 2, "NOSCRIPT on the new master: loaded again and run"
    client.set("llmq:test:after", "1")
    assert promoted.client().get("llmq:test:after") == b"1", "the write went to the new master"
    client.close()


def test_every_job_completes_once_when_the_master_is_killed_mid_load(
    nodes: SentinelSet,
    sentinel_settings: Settings,
    database: Database,
    sim: SimulatorControl,
    auth: dict[str, str],
    logs_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bare = unique_model("failover")
    sim.script(bare, [], default={"fault": "ok", "latency": 0.2})
    tag = uuid.uuid4().hex[:6]
    sweeper_log, llm_log = logs_dir / f"sentinel-sweeper-{tag}.log", logs_dir / f"sentinel-llm-{tag}.log"
    sweeper_name, llm_name = f"sentinel-sweeper-{tag}@127.0.0.1", f"sentinel-llm-{tag}@127.0.0.1"
    sweeper = start_process(
        celery_worker_argv(sweeper_name, concurrency=4, beat_schedule=logs_dir / f"sentinel-beat-{tag}"),
        settings_env(sentinel_settings),
        sweeper_log,
    )
    celery = configure_celery(sentinel_settings)
    llm = None
    try:
        wait_for(
            lambda: celery.control.ping(destination=[sweeper_name], timeout=1.0), timeout=60, what="sweeper"
        )
        llm = start_llm_worker(sentinel_settings, llm_name, llm_log)
        app = create_app(sentinel_settings)
        client = app.test_client()
        ids: list[str] = []
        submit_s: list[float] = []
        promotion: list[float] = []
        for i in range(JOBS):
            started = time.monotonic()
            response = client.post(
                "/v1/jobs", json={"prompt": f"failover {i}", "model": f"openai/{bare}"}, headers=auth
            )
            submit_s.append(time.monotonic() - started)
            assert response.status_code == 202, response.get_json()
            ids.append(response.get_json()["id"])
            if i == KILL_AFTER:
                done_at_kill = _completed(database, ids)
                old_master = nodes.master_port()
                nodes.master.kill()
                killed_at = time.monotonic()
                watcher = threading.Thread(target=_note_promotion, args=(nodes, old_master, promotion))
                watcher.start()
            time.sleep(SUBMIT_PAUSE_S)
        watcher.join(90)
        wait_for(
            lambda: _completed(database, ids) == JOBS or _failed(database, ids),
            timeout=240,
            interval=0.5,
            what="every job to complete",
        )
        all_done_after = time.monotonic() - killed_at
        assert sweeper.poll() is None and llm.poll() is None, "the workers rode the failover out"
    finally:
        if llm is not None:
            stop_process(llm)
        stop_process(sweeper)
    assert promotion, "the Sentinels promoted the replica"
    assert 0 < done_at_kill < KILL_AFTER + 1, "the master died with the load under way"
    with database.session() as session:
        statuses = dict(
            session.execute(
                select(Job.status, func.count()).where(Job.id.in_(ids)).group_by(Job.status)
            ).all()
        )
        successes = dict(
            session.execute(
                select(Attempt.job_id, func.count())
                .where(Attempt.job_id.in_(ids), Attempt.outcome == "success")
                .group_by(Attempt.job_id)
            ).all()
        )
        attempts = (
            session.scalar(select(func.count()).select_from(Attempt).where(Attempt.job_id.in_(ids))) or 0
        )
    assert statuses == {"completed": JOBS}
    assert successes == {job_id: 1 for job_id in ids}, "each job completed once: one successful attempt"
    calls = sim.requests_for(bare)
    assert calls <= attempts, "no provider call without its attempt"
    logs = sweeper_log.read_text() + llm_log.read_text()
    captured = capsys.readouterr()  # the API's log, in this process
    deferred = (captured.out + captured.err).count("enqueue_deferred")
    with capsys.disabled():  # the figures RELIABILITY.md quotes
        print(
            f"\nsentinel failover: promoted {promotion[0] - killed_at:.1f}s after the kill, all {JOBS} done "
            f"{all_done_after:.1f}s after it; {done_at_kill} done at the kill; attempts {attempts}, "
            f"provider calls {calls}; re-sent by the sweeper {_swept(logs)}; gate parked on Redis errors "
            f"{logs.count('limits_unavailable')}; submits deferred to the sweeper {deferred}; "
            f"slowest submit {max(submit_s):.2f}s, median {statistics.median(submit_s) * 1000:.0f}ms"
        )


def _note_promotion(nodes: SentinelSet, old_master: int, promotion: list[float]) -> None:
    nodes.wait_promoted(old_master)
    promotion.append(time.monotonic())


def _completed(db: Database, ids: list[str]) -> int:
    with db.session() as session:
        return int(
            session.scalar(select(func.count()).where(Job.id.in_(ids), Job.status == "completed")) or 0
        )


def _failed(db: Database, ids: list[str]) -> bool:
    with db.session() as session:
        return bool(session.scalar(select(func.count()).where(Job.id.in_(ids), Job.status == "failed")))


def _swept(logs: str) -> int:
    total = 0
    for line in logs.splitlines():
        if '"sweep_done"' in line:
            try:
                total += int(json.loads(line[line.index("{") :]).get("enqueued", 0))
            except ValueError:
                continue
    return total
