"""What one worker process holds: the database, the provider clients, the prices, and an asyncio
event loop on a background thread where every provider call of the process runs.

Celery's pool threads hand a call to the loop and wait on its future: waiting costs no CPU, the
SDK clients and their connection pools are shared by the whole process, and each call's deadline
is enforced by asyncio whatever the pool. Built lazily, once per process (after any fork).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import redis

from llmq.models.db import Database
from llmq.settings import Settings, get_settings
from llmq.workers.breaker import CircuitBreakers
from llmq.workers.cache import ResponseCache
from llmq.workers.inflight import CancelListener, InFlightCalls, LeaseKeeper
from llmq.workers.pricing import PriceTable, load_providers_file
from llmq.workers.progress import ProgressWriter
from llmq.workers.providers.registry import ProviderRegistry
from llmq.workers.ratelimit import fleet_limiter

T = TypeVar("T")


class WorkerRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self.db = Database(
            settings.database_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow
        )
        self.providers = load_providers_file(settings.providers_file)
        self.prices = PriceTable.from_config(self.providers)
        self.redis = redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=2)
        self.limiter = fleet_limiter(self.redis, self.providers)
        self.breakers = CircuitBreakers(self.redis, self.providers)
        self.cache = ResponseCache(self.redis, self.providers.cache)
        self.registry = ProviderRegistry.from_settings(settings)
        self.http = httpx.Client(
            timeout=httpx.Timeout(settings.webhook_timeout_s, connect=5.0),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=settings.webhook_worker_concurrency * 2),
        )
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="llmq-provider-loop", daemon=True)
        self._thread.start()
        self.inflight = InFlightCalls()
        self.lease_keeper = LeaseKeeper(self.db, self.inflight, settings.lease_s, self.limiter)
        self.lease_keeper.start()
        self.cancel_listener = CancelListener(settings.broker_url, self.inflight)
        self.cancel_listener.start()
        self.progress = ProgressWriter(self.db, settings.progress_interval_s)
        self.progress.start()
        for name in self.registry.known_providers():  # create the SDK clients now, not mid-call
            self.registry.resolve(f"{name}/warm-up")

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the process's event loop; cancelling the future cancels the call."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def shutdown_calls(self) -> int:
        """A warm shutdown: stop every call; each task hands its job back to the queue."""
        self.inflight.shutting_down = True
        return self.inflight.cancel_all()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the process's event loop and wait for it from this (pool) thread."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        self.lease_keeper.stop()
        self.cancel_listener.stop()
        self.progress.stop()
        try:
            self.run(self.registry.aclose(), timeout=5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.http.close()
            self.db.dispose()


_runtime: WorkerRuntime | None = None
_runtime_pid: int | None = None
_lock = threading.Lock()


def get_runtime(settings: Settings | None = None) -> WorkerRuntime:
    global _runtime, _runtime_pid
    if _runtime is not None and _runtime_pid == os.getpid():
        return _runtime
    with _lock:
        if _runtime is None or _runtime_pid != os.getpid():
            _runtime = WorkerRuntime(settings or get_settings())
            _runtime_pid = os.getpid()
    return _runtime


def current_runtime() -> WorkerRuntime | None:
    """The runtime of this process if one was built (signal handlers must not build one)."""
    return _runtime if _runtime_pid == os.getpid() else None


def reset_runtime() -> None:
    """Forget the runtime inherited across a fork (its loop thread did not survive it)."""
    global _runtime, _runtime_pid
    _runtime = None
    _runtime_pid = None
