"""Helpers for integration tests: free ports, waiting, the environment a child process needs to
see the same settings as the test, and a local webhook receiver."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from llmq.config.settings import Settings

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling until the deadline
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: {last_exc!r}")


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make a child process build exactly these settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "ANTHROPIC_", "LLMQ_", "REDIS_URL", "DATABASE_URL"))
    }
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "LLMQ_SIMULATOR_URL": settings.simulator_url,
            "LLMQ_PROVIDER_TIMEOUT_S": str(settings.provider_timeout_s),
            "LLMQ_RETRY_BASE_S": str(settings.retry_base_s),
            "LLMQ_RETRY_CAP_S": str(settings.retry_cap_s),
            "LLMQ_MAX_ATTEMPTS": str(settings.max_attempts),
            "LLMQ_WEBHOOK_RETRY_SCHEDULE": ",".join(str(s) for s in settings.webhook_retry_schedule),
            "LLMQ_WEBHOOK_TIMEOUT_S": str(settings.webhook_timeout_s),
            "LLMQ_SWEEP_INTERVAL_S": str(settings.sweep_interval_s),
            "LLMQ_LEASE_S": str(settings.lease_s),
            "LLMQ_REQUEUE_AFTER_S": str(settings.requeue_after_s),
            "LLMQ_JOB_TIMEOUT_S": str(settings.job_timeout_s),
            "LLMQ_WEBHOOK_ALLOW_PRIVATE": str(settings.webhook_allow_private).lower(),
            "LLMQ_STREAM": str(settings.stream).lower(),
            "LLMQ_PROGRESS_INTERVAL_S": str(settings.progress_interval_s),
            "LLMQ_WORKER_CONCURRENCY": str(settings.worker_concurrency),
            "LLMQ_FILES_DIR": str(settings.files_root),
            "LLMQ_BATCH_TICK_S": str(settings.batch_tick_s),
            "LLMQ_LOG_LEVEL": settings.log_level,
            "PYTHONUNBUFFERED": "1",
        }
    )
    if settings.redis_url:
        env["REDIS_URL"] = settings.redis_url
    for name, endpoint in settings.extra_providers.items():
        env[f"LLMQ_PROVIDER_{name.upper()}_BASE_URL"] = endpoint.base_url
        env[f"LLMQ_PROVIDER_{name.upper()}_API_KEY"] = endpoint.api_key
    return env


def start_process(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def start_llm_worker(
    settings: Settings,
    name: str,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    queues: str = "llm",
) -> subprocess.Popen[bytes]:
    """An LLM worker started with the Procfile's command (``llmq worker --queues llm``), once it
    answers a ping. ``queues``: another queue keeps a test's messages from other workers."""
    from llmq.tasks.app import configure_celery

    env = {**settings_env(settings), **(extra_env or {})}
    proc = start_process([str(VENV_BIN / "llmq"), "worker", "--queues", queues, "-n", name], env, log_path)
    app = configure_celery(settings)
    try:
        wait_for(lambda: app.control.ping(destination=[name], timeout=1.0), timeout=60, what=name)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class ReceivedHook:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """A local HTTP server that records every POST. ``fail_next(path, n, status)`` makes the next
    ``n`` requests to ``path`` answer ``status`` (recorded all the same)."""

    port: int
    received: list[ReceivedHook] = field(default_factory=list)
    _failures: dict[str, list[int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def fail_next(self, path: str, count: int, status: int = 500) -> None:
        with self._lock:
            self._failures[path] = [status] * count

    def for_path(self, path: str) -> list[ReceivedHook]:
        with self._lock:
            return [hook for hook in self.received if hook.path == path]

    def _answer(self, path: str) -> int:
        with self._lock:
            queue = self._failures.get(path)
            if queue:
                return queue.pop(0)
        return 204

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                hook = ReceivedHook(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                )
                with receiver._lock:
                    receiver.received.append(hook)
                status = receiver._answer(self.path)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def simulator_ready(url: str) -> bool:
    return httpx.get(f"{url}/_sim/health", timeout=1).status_code == 200


def celery_worker_argv(
    name: str, *, concurrency: int, events: bool = False, beat_schedule: Path | None = None
) -> list[str]:
    """A threads-pool Celery worker on both queues (``-B`` with ``beat_schedule``: the sweeper too)."""
    argv = [str(VENV_BIN / "celery"), "-A", "llmq.tasks.app", "worker", "-Q", "llm,webhooks"]
    argv += ["-P", "threads", "-c", str(concurrency), "-n", name]
    if events:
        argv.append("-E")
    if beat_schedule is not None:
        argv += ["-B", "-s", str(beat_schedule)]
    return [*argv, "--without-gossip", "--without-mingle", "--loglevel", "INFO"]
