"""One measured phase of ``llmq bench``: warm up, offer the load, wait for every job to end,
then gather the timings from the load generator, the receiver, the simulator and the database.

Timeline of a phase::

    start LLM worker(s) ─ warm-up (own model, 50 ms answers) ─ reset simulator stats
    ─ sampler on ─ load generator (own process) ─ poll the database until all final (or timeout)
    ─ sampler off ─ collect

Every timestamp is unix seconds from the same host clock: the load generator's ``sent`` and
``answered``, the database's ``created_at``/attempt ``started_at``/``ended_at``/``completed_at``
(written by the API and the worker), and the receiver's arrival time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from llmq.bench.sampler import ProcessSampler, postgres_groups, tree
from llmq.bench.stack import BenchError, Stack, database_name

FINAL = ("completed", "failed", "cancelled")
# Groups whose processes make up "the worker host" of the memory target.
WORKER_HOST = ["llm_worker", "webhook_worker", "beat"]


@dataclass
class PhasePlan:
    name: str  # "llmq" or "baseline"
    baseline: bool
    jobs: int
    rate: float
    max_offer_s: float  # stop offering after this long
    wait_s: float  # after the last offer, wait at most this long for jobs to end
    cutoff_s: float | None = None  # baseline: stop at first submit + cutoff_s, finished or not
    webhooks: bool = True
    warmup_jobs: int = 20
    submit_only: bool = False  # no LLM worker: measure the submit path alone, jobs stay queued
    connections: int = 2000  # the load generator's connection pool (keep-alive connections)
    burst_every_s: float = 0.0  # 0: steady; else the load comes in bursts this far apart


@dataclass
class PhaseData:
    plan: PhasePlan
    model: str
    nodes: list[str]
    load: dict[str, Any]
    jobs: list[dict[str, Any]]
    arrivals: dict[str, float]
    receiver: dict[str, Any]
    sim: dict[str, Any]
    cpu: dict[str, Any]
    machine: dict[str, Any]
    wait_ended_at: float
    timed_out: bool
    timeline: list[dict[str, Any]] = field(default_factory=list)


def run_phase(stack: Stack, plan: PhasePlan) -> PhaseData:
    tag = f"{plan.name}-{stack.run_id}"
    model = f"openai/bench-{tag}"
    nodes = [] if plan.submit_only else stack.start_llm_workers(plan.name, baseline=plan.baseline)
    try:
        _warm_up(stack, plan, f"warmup-{tag}")
        _sim_post(stack, "/_sim/stats/reset")
        sampler = _sampler(stack)
        sampler.start()
        load_out = stack.config.run_dir / f"load-{plan.name}.json"
        hooks_before = _recv_get(stack, "/_bench/stats")["unique"]
        load_proc = _start_load(stack, plan, model, load_out)
        stack.procs[f"load_{plan.name}"] = load_proc
        timeline: list[dict[str, Any]] = []
        t0 = time.time()
        hard_stop = t0 + plan.max_offer_s + plan.wait_s + 60
        if plan.cutoff_s is not None:
            hard_stop = min(hard_stop, t0 + plan.cutoff_s + 30)
        while load_proc.poll() is None:
            timeline.append(_snapshot(stack, model, t0))
            if time.time() > hard_stop:
                load_proc.kill()
                raise BenchError("the load generator did not finish in time")
            time.sleep(1.0)
        if load_proc.returncode != 0:
            raise BenchError(f"load generator exited with {load_proc.returncode}; see its log")
        load = json.loads(load_out.read_text())
        accepted = [row[5] for row in load["rows"] if row[5]]
        first_sent = min((row[2] for row in load["rows"]), default=t0)
        deadline = time.time() + plan.wait_s
        if plan.cutoff_s is not None:
            deadline = min(deadline, first_sent + plan.cutoff_s)
        timed_out = False
        if not plan.submit_only:
            timed_out = _wait_final(stack, plan, model, len(accepted), deadline, timeline, t0, hooks_before)
        wait_ended_at = time.time()
        sampler.stop()
        sim = _sim_get(stack, "/_sim/stats")
        receiver = _recv_get(stack, "/_bench/stats")
        arrivals = _recv_get(stack, "/_bench/arrivals")["arrivals"] if plan.webhooks else {}
        jobs = _job_rows(stack, model)
        load_cpu = load.pop("cpu_s")
        cpu = {name: vars(fig) for name, fig in sampler.figures().items()}
        # the generator measured itself exactly (getrusage); the sampler may miss its last 0.5 s
        cpu["load_generator"]["cpu_s"] = max(load_cpu, cpu["load_generator"]["cpu_s"])
        return PhaseData(
            plan=plan,
            model=model,
            nodes=nodes,
            load=load,
            jobs=jobs,
            arrivals={k: v for k, v in arrivals.items() if k in set(accepted)},
            receiver=receiver,
            sim=sim,
            cpu=cpu,
            machine=sampler.machine(),
            wait_ended_at=wait_ended_at,
            timed_out=timed_out,
            timeline=timeline,
        )
    finally:
        stack.stop_llm_workers()


def _sampler(stack: Stack) -> ProcessSampler:
    import os

    groups = {
        "api": tree(lambda: stack.pids("api")),
        "llm_worker": tree(lambda: stack.pids(*stack.llm_workers)),
        "webhook_worker": tree(lambda: stack.pids("webhook_worker")),
        "beat": tree(lambda: stack.pids("beat")),
        "redis": tree(lambda: stack.pids("redis")),
        "simulator": tree(lambda: stack.pids("simulator")),
        "receiver": tree(lambda: stack.pids("receiver")),
        "load_generator": tree(lambda: [p.pid for n, p in stack.procs.items() if n.startswith("load_")]),
        "bench_runner": lambda table: {os.getpid()},
        **postgres_groups(database_name(stack.config.database_url)),
    }
    return ProcessSampler(groups, combined={"worker_host": WORKER_HOST})


def _start_load(stack: Stack, plan: PhasePlan, model: str, out: Path) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "llmq.bench.load", "--api", stack.api_url, "--key", stack.api_key,
        "--jobs", str(plan.jobs), "--rate", str(plan.rate), "--model", model,
        "--max-seconds", str(plan.max_offer_s), "--out", str(out),
        "--concurrency", str(plan.connections), "--burst-every", str(plan.burst_every_s),
    ]  # fmt: skip
    if plan.webhooks:
        argv += ["--webhook-url", f"{stack.receiver_url}/hooks/{plan.name}"]
    log_path = stack.logs / f"load_{plan.name}.log"
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


def _warm_up(stack: Stack, plan: PhasePlan, tag: str) -> None:
    """A few jobs of a throw-away model answered in 50 ms, so that lazily built clients, pools and
    connections exist before the measured load (and the worker is known to work)."""
    if plan.warmup_jobs <= 0:
        return
    bare = f"bench-{tag}"
    _sim_post(stack, "/_sim/script", {"model": bare, "default": {"fault": "ok", "latency": 0.05}})
    accepted: list[str] = []
    for attempt in range(3):  # the machine's Postgres may be restarting (other tests stop it)
        out = stack.config.run_dir / f"load-{tag}-{attempt}.json"
        proc = _start_load(
            stack,
            PhasePlan(
                name=tag, baseline=plan.baseline, jobs=plan.warmup_jobs, rate=50, max_offer_s=30, wait_s=0,
                webhooks=plan.webhooks,
            ),
            f"openai/{bare}",
            out,
        )  # fmt: skip
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise BenchError("warm-up load did not finish") from None
        load = json.loads(out.read_text())
        accepted = [row[5] for row in load["rows"] if row[5]]
        if accepted:
            break
        errors = sorted({str(row[6])[:200] for row in load["rows"]})
        if attempt == 2:
            raise BenchError(f"warm-up: the API accepted no job: {errors[:3]}")
        time.sleep(15)
    if plan.submit_only:
        return
    deadline = time.time() + 120

    def done() -> bool:
        try:
            counts = _status_counts(stack, f"openai/{bare}")
        except Exception:  # Postgres restarting: ask again
            return False
        return sum(counts.get(s, 0) for s in FINAL) >= len(accepted)

    while not done():
        for name in stack.llm_workers:
            stack.check_alive(name)
        if time.time() > deadline:
            # Some warm-up job may have been caught by a Postgres restart: warm enough, go on.
            print("llmq bench: warm-up jobs not all final after 120 s; going on", file=sys.stderr)
            break
        time.sleep(0.3)
    time.sleep(1.0)  # let the warm-up webhooks go out before the measured window opens


def _wait_final(
    stack: Stack,
    plan: PhasePlan,
    model: str,
    accepted: int,
    deadline: float,
    timeline: list[dict[str, Any]],
    t0: float,
    hooks_before: int,
) -> bool:
    """Poll until every accepted job is final and (with webhooks) its webhook arrived. Returns
    True when the deadline came first."""
    while True:
        snap = _snapshot(stack, model, t0)
        timeline.append(snap)
        final = sum(snap["status"].get(s, 0) for s in FINAL)
        hooks_done = not plan.webhooks or (snap["hooks_total"] or 0) - hooks_before >= final
        if final >= accepted and hooks_done:
            return False
        if time.time() >= deadline:
            return True
        for name in stack.llm_workers:
            stack.check_alive(name)
        time.sleep(0.5 if accepted < 1000 else 1.0)


def _snapshot(stack: Stack, model: str, t0: float) -> dict[str, Any]:
    snap: dict[str, Any] = {"t": round(time.time() - t0, 2)}
    try:
        snap["sim_in_flight"] = _sim_get(stack, "/_sim/stats")["in_flight"]
    except Exception:
        snap["sim_in_flight"] = None
    try:
        snap["hooks_total"] = _recv_get(stack, "/_bench/stats")["unique"]
    except Exception:
        snap["hooks_total"] = None
    try:
        snap["status"] = _status_counts(stack, model)
    except Exception as exc:  # Postgres restarting under us: keep polling
        snap["status"] = {}
        snap["db_error"] = type(exc).__name__
    return snap


_engine_cache: dict[str, Any] = {}


def _engine(stack: Stack) -> Any:
    from sqlalchemy import create_engine

    url = stack.config.database_url
    if url not in _engine_cache:
        _engine_cache[url] = create_engine(url, pool_size=1, max_overflow=1, pool_pre_ping=True)
    return _engine_cache[url]


def _client() -> httpx.Client:
    if "http" not in _engine_cache:
        _engine_cache["http"] = httpx.Client(timeout=30)
    client: httpx.Client = _engine_cache["http"]
    return client


def close_clients() -> None:
    """Dispose the runner's database engines and close its HTTP client."""
    for key, value in _engine_cache.items():
        if key == "http":
            value.close()
        else:
            value.dispose()
    _engine_cache.clear()


def _status_counts(stack: Stack, model: str) -> dict[str, int]:
    with _engine(stack).connect() as conn:
        rows = conn.execute(
            text("SELECT status, count(*) FROM jobs WHERE tenant_id = :t AND model = :m GROUP BY status"),
            {"t": stack.tenant_id, "m": model},
        ).all()
    return {status: int(n) for status, n in rows}


def _job_rows(stack: Stack, model: str) -> list[dict[str, Any]]:
    """Every job of the phase with its last attempt (for a completed job, the successful one),
    times as unix seconds."""
    query = text(
        """
        SELECT j.id, j.status, j.attempts,
               extract(epoch FROM j.created_at)::float8 AS created,
               extract(epoch FROM j.started_at)::float8 AS started,
               extract(epoch FROM j.completed_at)::float8 AS completed,
               extract(epoch FROM a.started_at)::float8 AS att_started,
               extract(epoch FROM a.ended_at)::float8 AS att_ended,
               a.outcome AS att_outcome,
               j.error_type
        FROM jobs j
        LEFT JOIN LATERAL (
            SELECT started_at, ended_at, outcome FROM job_attempts
            WHERE job_id = j.id ORDER BY number DESC LIMIT 1
        ) a ON true
        WHERE j.tenant_id = :t AND j.model = :m
        """
    )
    for attempt in range(30):
        try:
            with _engine(stack).connect() as conn:
                return [dict(row._mapping) for row in conn.execute(query, {"t": stack.tenant_id, "m": model})]
        except Exception:  # Postgres restarting under us: it comes back in ~10 s
            if attempt == 29:
                raise
            time.sleep(1.0)
    return []


def _sim_get(stack: Stack, path: str) -> Any:
    return _client().get(stack.sim_url + path, timeout=5).json()


def _sim_post(stack: Stack, path: str, body: Any = None) -> Any:
    response = _client().post(stack.sim_url + path, json=body, timeout=5)
    response.raise_for_status()
    return response.json()


def _recv_get(stack: Stack, path: str) -> Any:
    return _client().get(stack.receiver_url + path).json()
