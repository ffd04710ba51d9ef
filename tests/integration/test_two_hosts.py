"""Two "hosts" sharing one Redis and one Postgres, each with its own API (gunicorn), LLM worker
and webhook worker, started with the Procfile's commands in process groups of their own, on
their own ports and scratch directories (beat, a singleton, runs beside host A's processes, as a
one-replica Deployment would). What must hold across them, as on a real fleet:

- a model's concurrency limit is the fleet's, not each host's: the provider never sees more;
- a breaker opened by failures is open on both hosts: no call reaches the failing model;
- a tenant's budget is one budget: the hosts together never spend past it;
- a whole host killed (SIGKILL of every process of it) mid-load loses nothing: every job a client
  was answered 202 for completes, its webhook arrives, and only the calls that were in flight on
  the dead host run a second time. A client whose request died with the host retries it against
  the other host with the same ``Idempotency-Key`` and gets the same job, never a second one.

The module has its own database and Redis database: no other worker of the suite (nor the
session worker's sweeper) takes these jobs.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select, update

from llmq.config.settings import Settings
from llmq.models.base import utcnow
from llmq.models.db import Database
from llmq.models.migrate import recreate_database
from llmq.models.tables import Attempt, Job, Tenant
from llmq.models.tenants import IssuedKey, create_key
from tests.integration.conftest import SimulatorControl
from tests.integration.services import (
    VENV_BIN,
    WebhookReceiver,
    free_port,
    settings_env,
    start_process,
    wait_for,
)

RUN = uuid.uuid4().hex[:6]
M = {name: f"openai/hosts-{name}-{RUN}" for name in ("capped", "primary", "backup", "priced", "load")}
CAP = 4  # the capped model's calls in flight, fleet-wide
BREAKER_FAILURES = 3
PROMPT = "x" * 96  # the simulator counts 27 prompt tokens, llmq estimates 31 (see test_budgets)
MAX_TOKENS = 12  # the simulator answers 12 words, one token each
# $10 and $30 per million tokens, in units of 1e-8 USD: a call reserves WORST and costs REAL.
WORST, REAL = 31 * 1000 + 12 * 3000, 27 * 1000 + 12 * 3000
FITS = 10  # calls the budget has room for: ten settled calls, and the tenth's worst case
BUDGET_UNITS = FITS * REAL + (WORST - REAL)
FINAL = {"completed", "failed", "cancelled"}


def _providers_file(path: Path) -> Path:
    path.write_text(
        f"""
[breaker]
failures = {BREAKER_FAILURES}
cooldown_s = 600
min_calls = 1000

[models."{M["capped"]}"]
concurrency = {CAP}

[models."{M["primary"]}"]
fallbacks = ["{M["backup"]}"]

[models."{M["priced"]}"]
input_usd_per_mtok = 10
output_usd_per_mtok = 30
"""
    )
    return path


@dataclass
class Host:
    """One host's processes: the API, an LLM worker, a webhook worker (and beat on host A)."""

    name: str
    api_port: int
    env: dict[str, str]
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def llm_worker_pid(self) -> int:
        return self.procs["worker"].pid  # `llmq worker` execs celery: the same process

    def start(self, *, beat: bool) -> None:
        llmq = str(VENV_BIN / "llmq")
        commands = {
            "api": [llmq, "api"],
            "worker": [llmq, "worker", "--queues", "llm", "-n", f"llm-{self.name}-{RUN}@127.0.0.1"],
            "webhooks": [llmq, "worker", "--queues", "webhooks", "-n", f"hooks-{self.name}-{RUN}@127.0.0.1"],
        }
        if beat:
            commands["beat"] = [llmq, "beat"]
        for role, argv in commands.items():
            self.procs[role] = start_process(argv, self.env, self.logs / f"host-{self.name}-{role}.log")

    def wait_ready(self) -> None:
        wait_for(
            lambda: httpx.get(f"{self.url}/ready", timeout=2).status_code == 200,
            timeout=90,
            what=f"{self.name}'s API",
        )
        app = _celery(self.env)
        for prefix in ("llm", "hooks"):
            node = f"{prefix}-{self.name}-{RUN}@127.0.0.1"
            wait_for(partial(_pong, app, node), timeout=90, what=node)

    def kill(self) -> None:
        """The host dies: SIGKILL to every process group it runs (gunicorn's workers and the
        worker's children included), with no chance to hand anything back."""
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs.values():
            proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def _pong(app: Any, node: str) -> bool:
    return bool(app.control.ping(destination=[node], timeout=1.0))


def _celery(env: dict[str, str]) -> Any:
    from celery import Celery

    return Celery(broker=env["REDIS_URL"])


@pytest.fixture(scope="module")
def hosts_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    providers = _providers_file(tmp_path_factory.mktemp("hosts") / "providers.toml")
    redis_url = os.environ.get("LLMQ_TEST_HOSTS_REDIS_URL") or settings.broker_url.rsplit("/", 1)[0] + "/6"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    database_url = settings.database_url + "_hosts"
    recreate_database(database_url)
    return settings.model_copy(
        update={"redis_url": redis_url, "database_url": database_url, "providers_file": providers}
    )


@pytest.fixture(scope="module")
def hosts_db(hosts_settings: Settings) -> Iterator[Database]:
    db = Database(hosts_settings.database_url)
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def hosts(
    hosts_settings: Settings, simulator: str, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Host]]:
    fleet: dict[str, Host] = {}
    try:
        for name in ("a", "b"):
            port = free_port()
            env = {
                **settings_env(hosts_settings),
                "LLMQ_PROVIDERS_FILE": str(hosts_settings.providers_file),
                "LLMQ_API_HOST": "127.0.0.1",
                "LLMQ_API_PORT": str(port),
                "LLMQ_API_WORKERS": "2",
                "LLMQ_VAR_DIR": str(tmp_path_factory.mktemp(f"host-{name}")),
                "LLMQ_WORKER_CONCURRENCY": "8",
            }
            fleet[name] = Host(name, port, env, logs_dir)
            fleet[name].start(beat=name == "a")
        for host in fleet.values():
            host.wait_ready()
        yield fleet
    finally:
        for host in fleet.values():
            host.stop()


@pytest.fixture(scope="module")
def hosts_tenant(hosts_db: Database) -> IssuedKey:
    with hosts_db.transaction() as session:
        return create_key(session, tenant_name=f"hosts-{RUN}", now=utcnow(), tier="unlimited")


def _submit(host: Host, key: IssuedKey, body: dict[str, Any], idempotency_key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key.api_key}"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    response = httpx.post(f"{host.url}/v1/jobs", json=body, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _submit_across(hosts: dict[str, Host], key: IssuedKey, n: int, **body: Any) -> list[str]:
    """n jobs, every other one through each host's API."""
    order = itertools.cycle(hosts.values())
    return [
        _submit(next(order), key, {"prompt": f"{RUN} {i} {uuid.uuid4().hex[:6]}", **body}) for i in range(n)
    ]


def _wait_final(db: Database, ids: list[str], timeout: float = 120) -> list[Job]:
    def ended() -> list[Job] | None:
        with db.session() as session:
            jobs = list(session.scalars(select(Job).where(Job.id.in_(ids))))
        return jobs if len(jobs) == len(ids) and all(j.status in FINAL for j in jobs) else None

    return wait_for(ended, timeout=timeout, interval=0.5, what=f"{len(ids)} jobs to end")


def _attempt_workers(db: Database, ids: list[str]) -> set[int]:
    """The pids of the worker processes that made the jobs' attempts."""
    with db.session() as session:
        names = session.scalars(select(Attempt.worker).where(Attempt.job_id.in_(ids)).distinct())
        return {int(name.rsplit(":", 1)[1]) for name in names if name}


def test_a_models_concurrency_limit_holds_across_hosts(
    hosts: dict[str, Host], hosts_db: Database, hosts_tenant: IssuedKey, sim: SimulatorControl
) -> None:
    bare = M["capped"].split("/", 1)[1]
    sim.script(bare, [], default={"latency": 0.4})
    ids = _submit_across(hosts, hosts_tenant, 40, model=M["capped"], max_tokens=MAX_TOKENS)
    jobs = _wait_final(hosts_db, ids)
    assert {j.status for j in jobs} == {"completed"}
    stats = sim.stats()
    assert stats["requests_by_model"][bare] == 40, "each job called once"
    assert stats["peak_in_flight_by_model"][bare] <= CAP, stats["peak_in_flight_by_model"][bare]
    assert stats["peak_in_flight_by_model"][bare] >= 2, "the calls overlapped: the limit was exercised"
    assert _attempt_workers(hosts_db, ids) == {h.llm_worker_pid for h in hosts.values()}, (
        "both hosts' workers made calls under the one limit"
    )


def test_a_breaker_opened_through_one_host_is_open_on_the_other(
    hosts: dict[str, Host], hosts_db: Database, hosts_tenant: IssuedKey, sim: SimulatorControl
) -> None:
    primary = M["primary"].split("/", 1)[1]
    sim.script(primary, [], default={"fault": "500"})
    # Jobs one at a time through host A until the breaker opens: at most BREAKER_FAILURES calls.
    first = [
        _submit(hosts["a"], hosts_tenant, {"prompt": f"{RUN} primary {i}", "model": M["primary"]})
        for i in range(4)
    ]
    assert {j.served_by for j in _wait_final(hosts_db, first)} == {M["backup"]}
    opened_after = sim.requests_for(primary)
    assert BREAKER_FAILURES <= opened_after <= BREAKER_FAILURES + 4, opened_after
    # Now through host B, and taken by both hosts' workers: none reaches the failing model.
    more = [
        _submit(hosts["b"], hosts_tenant, {"prompt": f"{RUN} more {i}", "model": M["primary"]})
        for i in range(20)
    ]
    jobs = _wait_final(hosts_db, more)
    assert {j.status for j in jobs} == {"completed"} and {j.served_by for j in jobs} == {M["backup"]}
    assert sim.requests_for(primary) == opened_after, "a call reached the model whose breaker is open"
    assert _attempt_workers(hosts_db, more) == {h.llm_worker_pid for h in hosts.values()}
    for host in hosts.values():
        providers = httpx.get(
            f"{host.url}/v1/providers", headers={"Authorization": f"Bearer {hosts_tenant.api_key}"}
        ).json()["data"]
        state = {p["model"]: p["breaker"]["state"] for p in providers}[M["primary"]]
        assert state == "open", f"host {host.name} sees the breaker {state}"


def test_one_budget_across_hosts(hosts: dict[str, Host], hosts_db: Database, sim: SimulatorControl) -> None:
    with hosts_db.transaction() as session:
        key = create_key(session, tenant_name=f"hosts-budget-{RUN}", now=utcnow(), tier="unlimited")
        budget = Decimal(BUDGET_UNITS) / Decimal(10**8)
        session.execute(update(Tenant).where(Tenant.id == key.tenant_id).values(budget_usd=budget))
    sim.script(M["priced"].split("/", 1)[1], [], default={"latency": 0.2})
    ids = [
        _submit(host, key, {"prompt": PROMPT, "model": M["priced"], "max_tokens": MAX_TOKENS})
        for host in itertools.islice(itertools.cycle(hosts.values()), 4 * FITS)
    ]
    jobs = _wait_final(hosts_db, ids)
    completed = [j for j in jobs if j.status == "completed"]
    refused = [j for j in jobs if j.status == "failed"]
    assert {j.error_type for j in refused} == {"budget_exceeded"}
    assert len(completed) + len(refused) == len(jobs)
    assert len(completed) == FITS, f"{len(completed)} calls fit a budget with room for {FITS}"
    spent = sum((j.cost_usd or Decimal(0)) for j in jobs)
    assert spent <= budget, f"spent {spent} of a {budget} budget"
    assert all(j.cost_usd == Decimal(REAL) / Decimal(10**8) for j in completed), "no job charged twice"
    assert _attempt_workers(hosts_db, ids) == {h.llm_worker_pid for h in hosts.values()}


def test_a_host_killed_mid_load_loses_nothing(
    hosts: dict[str, Host],
    hosts_db: Database,
    hosts_tenant: IssuedKey,
    sim: SimulatorControl,
    webhook_receiver: WebhookReceiver,
) -> None:
    bare = M["load"].split("/", 1)[1]
    sim.script(bare, [], default={"latency": 1.0})
    hook = f"/hosts-{RUN}"
    total = 120
    accepted: dict[str, str] = {}  # idempotency key -> job id
    retried_elsewhere: list[str] = []
    a, b = hosts["a"], hosts["b"]
    b_dead = threading.Event()

    def submit_all() -> None:
        for i in range(total):
            key = f"{RUN}-load-{i}"
            body = {
                "prompt": f"{RUN} load {i}",
                "model": M["load"],
                "webhook_url": webhook_receiver.url(hook),
            }
            target = b if i % 2 and not b_dead.is_set() else a
            try:
                accepted[key] = _submit(target, hosts_tenant, body, idempotency_key=key)
            except (httpx.TransportError, AssertionError):
                # the host died under the request: did the job get made? Ask the other host the
                # same way, with the same key; the answer is the one job either way.
                assert target is b
                retried_elsewhere.append(key)
                accepted[key] = _submit(a, hosts_tenant, body, idempotency_key=key)
            time.sleep(0.05)

    submitter = threading.Thread(target=submit_all)
    submitter.start()
    try:

        def calls_in_flight_on_b() -> int:
            with hosts_db.session() as session:
                return int(
                    session.scalar(
                        select(func.count())
                        .select_from(Attempt)
                        .where(Attempt.outcome == "running", Attempt.worker.like(f"%:{b.llm_worker_pid}"))
                    )
                    or 0
                )

        wait_for(
            lambda: calls_in_flight_on_b() >= 4, timeout=60, interval=0.1, what="calls in flight on host b"
        )
        b.kill()
        b_dead.set()
        with hosts_db.session() as session:
            orphaned = set(
                session.scalars(
                    select(Attempt.job_id).where(
                        Attempt.outcome == "running", Attempt.worker.like(f"%:{b.llm_worker_pid}")
                    )
                )
            )
    finally:
        submitter.join(120)
    assert len(accepted) == total
    ids = list(accepted.values())
    assert len(set(ids)) == total, "a retried request made a second job"
    with hosts_db.session() as session:
        made = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == hosts_tenant.tenant_id, Job.model == M["load"])
        )
    assert made == total, (
        f"{made} jobs exist for {total} requests ({len(retried_elsewhere)} retried elsewhere)"
    )

    jobs = _wait_final(hosts_db, ids, timeout=180)
    assert {j.status for j in jobs} == {"completed"}, sorted(
        {(j.status, j.error_type) for j in jobs}, key=str
    )
    assert orphaned, "the kill found calls in flight on host b"
    twice = {j.id for j in jobs if j.attempts > 1}
    assert twice <= orphaned, (
        f"jobs that ran again without having been in flight on the dead host: {twice - orphaned}"
    )
    assert sim.requests_for(bare) <= total + len(orphaned)

    def every_webhook() -> bool:
        got = {h.json()["data"]["id"] for h in webhook_receiver.for_path(hook)}
        return set(ids) <= got

    wait_for(every_webhook, timeout=120, interval=0.5, what="a webhook for every job")
    events = [h.json() for h in webhook_receiver.for_path(hook)]
    assert {e["type"] for e in events} == {"job.completed"}
