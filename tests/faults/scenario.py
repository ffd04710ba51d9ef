"""One test's view of the shared :class:`~tests.faults.stack.Stack`: its own model name (so the
simulator counts its requests alone), webhook path, LLM workers and list of injected faults.

Workers are named by the test (``a``, ``b``, ``c``) and prefixed per test, so that node names
never repeat in a session. :meth:`Scenario.close` stops the test's workers, whatever happened.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
from sqlalchemy import or_, select

from llmq.models.db import Database
from llmq.models.tables import Attempt
from llmq.models.tenants import IssuedKey
from tests.faults.checks import check_invariants, wait_final
from tests.faults.load import SubmitReport, run_load
from tests.faults.receiver import Delivery
from tests.faults.stack import Stack
from tests.integration.services import wait_for
from tests.sync import done

_counter = 0


class Scenario:
    def __init__(self, stack: Stack, name: str, *, latency_s: float) -> None:
        global _counter
        _counter += 1
        self.stack = stack
        self.name = name
        self.prefix = f"t{_counter}"
        self.model = f"openai/fault-{uuid.uuid4().hex[:8]}"
        self.webhook_path = f"/hooks/{self.prefix}"
        self.faults: list[str] = []
        self.loads: list[SubmitReport] = []
        self.workers: list[str] = []
        self.log_offsets = stack.log_offsets()
        stack.set_latency(self.model, latency_s)
        self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="scenario-bg")

    # --- shortcuts to the shared part -----------------------------------------------------------------

    @property
    def db(self) -> Database:
        assert self.stack.db is not None
        return self.stack.db

    @property
    def tenant(self) -> IssuedKey:
        assert self.stack.tenant is not None
        return self.stack.tenant

    def sim_stats(self) -> dict[str, Any]:
        return self.stack.sim_stats()

    def redis_llen(self, queue: str = "llm") -> int:
        client = self.stack.redis()
        try:
            return int(done(client.llen(queue)))
        finally:
            client.close()

    # --- workers ---------------------------------------------------------------------------------

    def proc_name(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def start_worker(self, name: str, *, wait: bool = True) -> None:
        self.workers.append(self.proc_name(name))
        self.stack.start_worker(self.proc_name(name), wait=wait)

    def wait_worker_ready(self, name: str) -> None:
        self.stack.wait_worker_ready(self.proc_name(name))

    def pause_consuming(self, *names: str) -> None:
        """Stop the workers taking new jobs from the ``llm`` queue (Celery's ``cancel_consumer``):
        submits pile up on the broker, so that a burst can be released at once."""
        self.stack.control("cancel_consumer", tuple(self.proc_name(n) for n in names))

    def resume_consuming(self, *names: str) -> None:
        self.stack.control("add_consumer", tuple(self.proc_name(n) for n in names))

    def signal_worker(self, name: str, sig: signal.Signals) -> None:
        self.stack.kill_group(self.proc_name(name), sig)
        self.faults.append(f"{sig.name} worker {name}")

    def wait_exit(self, name: str, timeout: float = 60) -> int:
        proc = self.stack.procs[self.proc_name(name)]
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Celery's worker logs every thread's stack on SIGUSR1: say where the shutdown hangs.
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2.0)
            log = self.stack.logs / f"{self.proc_name(name)}.log"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-200:])
            message = f"worker {name} still running {timeout:.0f} s after the signal:\n{tail}"
            raise AssertionError(message) from None

    def worker_tags(self, name: str) -> set[str]:
        """What the worker writes in ``job_attempts.worker`` (``host:pid`` today; the node name is
        accepted too)."""
        proc = self.stack.procs[self.proc_name(name)]
        return {f"{self.stack.hostname}:{proc.pid}", self.stack.node(self.proc_name(name))}

    def running_on(self, name: str) -> set[str]:
        """Ids of jobs whose current attempt runs on worker ``name`` (from the database)."""
        pid = self.stack.procs[self.proc_name(name)].pid
        with self.db.session() as session:
            rows = session.scalars(
                select(Attempt.job_id).where(
                    Attempt.outcome == "running",
                    or_(Attempt.worker.in_(self.worker_tags(name)), Attempt.worker.like(f"%:{pid}")),
                )
            )
            return set(rows)

    def warm_up(self, names: tuple[str, ...], *, rounds: int = 6, batch: int = 20) -> None:
        """Run a few jobs of a throw-away model until each named worker has served one, so that
        its provider client and connections exist before the load (they are built lazily)."""
        model = f"openai/warmup-{uuid.uuid4().hex[:8]}"
        self.stack.set_latency(model, 0.05)
        for _ in range(rounds):
            report = run_load(
                self.stack.api_url, self.tenant.api_key, batch, rate_per_s=200, model=model,
                webhook_url=None, label="warm-up",
            )  # fmt: skip
            assert report.accepted_ids, f"warm-up: no submit was accepted: {report.by_status()}"
            wait_final(self, report.accepted_ids, timeout=60)
            with self.db.session() as session:
                served = set(
                    session.scalars(
                        select(Attempt.worker).where(Attempt.job_id.in_(report.accepted_ids)).distinct()
                    )
                )
            if all(self._served(name, served) for name in names):
                return
        raise AssertionError(f"warm-up: not every worker of {names} served a job")

    def _served(self, name: str, tags: set[str | None]) -> bool:
        pid = self.stack.procs[self.proc_name(name)].pid
        return any(t in self.worker_tags(name) or (t or "").endswith(f":{pid}") for t in tags)

    def exited(self) -> dict[str, int]:
        """Processes (shared ones and this test's workers) that have exited, with their codes."""
        names = [n for n in ("api", "hooks", "beat", "simulator", "redis", *self.workers)]
        return {n: code for n in names if (code := self.stack.procs[n].poll()) is not None}

    # --- faults ------------------------------------------------------------------------------------

    def restart_redis_empty(self) -> None:
        self.stack.restart_redis_empty()
        self.faults.append("redis restarted empty (FLUSHALL + restart)")

    @contextlib.contextmanager
    def postgres_down(self) -> Iterator[None]:
        """Postgres stopped for the block; started again whatever happens inside."""
        self.faults.append("postgres stopped")
        self.stack.stop_postgres()
        try:
            yield
        finally:
            self.stack.start_postgres()

    def stop_receiver(self) -> None:
        self.stack.receiver.stop()
        self.faults.append("webhook receiver stopped")

    def start_receiver(self, *, fail_first_per_id: int = 0) -> None:
        self.stack.receiver.fail_first(self.webhook_path, fail_first_per_id)
        self.stack.receiver.start()

    def deliveries(self) -> list[Delivery]:
        return self.stack.receiver.deliveries(self.webhook_path)

    def effects(self) -> dict[str, bytes]:
        return self.stack.receiver.effects(self.webhook_path)

    # --- load and checks -------------------------------------------------------------------------

    def burst_onto(
        self, workers: tuple[str, ...], jobs: int, *, in_flight_on: str, at_least: int
    ) -> SubmitReport:
        """Warm the workers, let ``jobs`` pile up on the broker, release them at once, and wait
        until ``in_flight_on`` runs at least ``at_least`` calls: the moment to inject a fault."""
        self.warm_up(workers)
        self.pause_consuming(*workers)
        report = self.submit_many(jobs, rate_per_s=100)
        assert len(report.accepted_ids) == jobs, f"every submit is accepted: {report.by_status()}"
        self.resume_consuming(*workers)
        wait_for(
            lambda: len(self.running_on(in_flight_on)) >= at_least,
            timeout=60,
            interval=0.05,
            what=f"{at_least} calls in flight on {in_flight_on}",
        )
        return report

    def submit_many(
        self,
        n: int,
        *,
        rate_per_s: float,
        model: str | None = None,
        webhook_path: str | None = None,
        idempotency_key: str | None = None,
        concurrency: int = 16,
        deadline_s: float | None = None,
        barrier: bool = False,
    ) -> SubmitReport:
        report = run_load(
            self.stack.api_url,
            self.tenant.api_key,
            n,
            rate_per_s=rate_per_s,
            model=model or self.model,
            webhook_url=self.stack.receiver.url(webhook_path or self.webhook_path),
            label=self.name,
            idempotency_key=idempotency_key,
            concurrency=concurrency,
            deadline_s=deadline_s,
            barrier=barrier,
        )
        self.loads.append(report)
        return report

    def submit_in_background(self, n: int, **kwargs: Any) -> Future[SubmitReport]:
        return self._background.submit(self.submit_many, n, **kwargs)

    def check_invariants(self, accepted_ids: list[str], **kwargs: Any) -> dict[str, Any]:
        return check_invariants(self, accepted_ids, self.model, **kwargs)

    def api_client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tenant.api_key}"}
        return httpx.Client(base_url=self.stack.api_url, headers=headers, timeout=15)

    # --- stop ---------------------------------------------------------------------------------------

    def close(self) -> None:
        began = time.monotonic()
        try:
            self._background.shutdown(wait=True, cancel_futures=True)
        finally:
            self.stack.stop(self.workers)
            self.stack.receiver.fail_first(self.webhook_path, 0)
            if not self.stack.receiver.running:
                self.stack.receiver.start()
            if self.stack.postgres_stopped:
                self.stack.start_postgres()
        self.close_s = round(time.monotonic() - began, 1)

    def log_tails(self) -> str:
        return self.stack.log_tails(since=self.log_offsets)
