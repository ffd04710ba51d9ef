"""What one worker process holds: the database, the provider clients, the prices, an asyncio
event loop on a background thread where every provider call and webhook POST of the process runs,
and the finisher threads that record finished calls.

Celery's pool threads claim a job and start its call on the loop, then go back to the queue:
a call in flight costs a coroutine, not a thread, the SDK clients and their connection pools are
shared by the whole process, and each call's deadline is enforced by asyncio whatever the pool.
Built lazily, once per process (after any fork).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from llmq.config.providers_file import load_providers_file
from llmq.config.settings import Settings, get_settings
from llmq.heap import keep_startup_heap_out_of_gc
from llmq.models.db import Database
from llmq.models.outbox import EventToSend
from llmq.models.records import CallResult, ClaimedJob, SendNow
from llmq.models.rollup import use_metadata_keys
from llmq.tasks.batch import BatchWriter
from llmq.tasks.deliveries import write_deliveries
from llmq.tasks.inflight import CallCapacity, CancelListener, InFlightCalls, LeaseKeeper
from llmq.tasks.tenancy import TenantPolicies
from llmq.webhooks.sender import DeliveryOutcome, webhook_session
from llmq.workers import metrics
from llmq.workers.breaker import CircuitBreakers
from llmq.workers.budgets import BudgetLedger
from llmq.workers.cache import ResponseCache
from llmq.workers.pricing import PriceTable
from llmq.workers.progress import ProgressWriter
from llmq.workers.providers.registry import ProviderRegistry
from llmq.workers.ratelimit import fleet_limiter
from llmq.workers.redis_client import redis_client
from llmq.workers.tenantlimit import TenantLimiter

if TYPE_CHECKING:
    from llmq.tasks.gate import Go

T = TypeVar("T")
logger = structlog.get_logger(__name__)


CompletionRecorder = Callable[["WorkerRuntime", list[tuple[ClaimedJob, "Go", CallResult]]], None]


class WorkerRuntime:
    def __init__(self, settings: Settings, record_completions: CompletionRecorder | None = None) -> None:
        """``record_completions`` writes a batch of successful calls (the generate task's
        :func:`~llmq.tasks.generate.record_completions`); without it each finisher records its own."""
        self.settings = settings
        sys.setswitchinterval(settings.worker_switch_interval_s)
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self.db = Database.from_settings(settings)
        self.providers = load_providers_file(settings.providers_file)
        self.prices = PriceTable.from_config(self.providers)
        use_metadata_keys(self.providers.usage.metadata_keys)  # what the usage rollup keeps
        self.redis = redis_client(settings.redis_target, socket_timeout=5, socket_connect_timeout=2)
        self.limiter = fleet_limiter(self.redis, self.providers)
        self.breakers = CircuitBreakers(self.redis, self.providers)
        self.budgets = BudgetLedger(self.redis)
        self.cache = ResponseCache(self.redis, self.providers.cache)
        self.policies = TenantPolicies(self.db, self.providers)
        self.tenant_limiter = TenantLimiter(self.redis, lease_s=self.providers.limits.lease_s)
        self.registry = ProviderRegistry.from_settings(settings)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="llmq-provider-loop", daemon=True)
        self._thread.start()
        self.webhook_session = self.run(_on_loop(webhook_session, settings.worker_max_in_flight))
        # A worker that ends a job claims its webhook event for a while and sends it at once.
        self.send_now = SendNow(hold_s=settings.webhook_timeout_s + 30)
        self.capacity = CallCapacity(settings.worker_max_in_flight)
        self.webhook_sends = CallCapacity(1 << 30)  # counts the POSTs not yet recorded
        self.delivery_recorder: BatchWriter[tuple[EventToSend, DeliveryOutcome]] = BatchWriter(
            "llmq-delivery-recorder",
            partial(write_deliveries, self),  # a failed batch stays queued and is written again
            # Nobody waits on these rows (the POST is done): a quarter second makes batches of
            # dozens under load, a few statements for all of them.
            interval_s=0.25,
            on_written=self.webhook_sends.give,
        )
        self.delivery_recorder.start()
        # Successful calls are recorded in batches on Postgres (one statement per batch, see
        # complete_jobs); elsewhere each finisher records its own.
        self.completions: BatchWriter[tuple[ClaimedJob, Go, CallResult]] | None = None
        if self.db.engine.dialect.name == "postgresql" and record_completions is not None:
            self.completions = BatchWriter(
                "llmq-completion-writer", partial(record_completions, self), eager=True, max_batch=200
            )
            self.completions.start()
        self.finishers = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.worker_finishers, thread_name_prefix="llmq-finisher"
        )
        self.inflight = InFlightCalls()
        self.lease_keeper = LeaseKeeper(self.db, self.inflight, settings.lease_s, self.limiter)
        self.lease_keeper.start()
        self.cancel_listener = CancelListener(settings.redis_target, self.inflight)
        self.cancel_listener.start()
        self.progress = ProgressWriter(self.redis, settings.progress_interval_s, ttl_s=settings.lease_s)
        self.progress.start()
        for name in self.registry.known_providers():  # create the SDK clients now, not mid-call
            self.registry.resolve(f"{name}/warm-up")
        metrics.set_enabled(settings.metrics)
        if metrics.serve_metrics(settings.metrics_port, lambda: len(self.capacity)):
            logger.info("metrics_serving", port=settings.metrics_port)
        keep_startup_heap_out_of_gc()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the process's event loop; cancelling the future cancels the call."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def shutdown_calls(self, wait_s: float | None = None) -> int:
        """A warm shutdown: stop every call, and wait until the finishers have handed each job
        back to the queue (and recorded the calls that had just ended), at most ``wait_s``
        (``LLMQ_WORKER_SHUTDOWN_WAIT_S``, 15 s)."""
        if wait_s is None:
            wait_s = self.settings.worker_shutdown_wait_s
        self.inflight.shutting_down = True
        stopped = self.inflight.cancel_all()
        until = time.monotonic() + wait_s
        if not self.capacity.wait_idle(wait_s):
            logger.warning("shutdown_calls_left", calls=len(self.capacity))
        if not self.webhook_sends.wait_idle(max(0.0, until - time.monotonic())):
            logger.warning("shutdown_webhooks_left", sends=len(self.webhook_sends))
        return stopped

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
        self.tenant_limiter.stop_renewing()
        self.cancel_listener.stop()
        self.progress.stop()
        self.finishers.shutdown(wait=True, cancel_futures=False)
        if self.completions is not None:
            self.completions.stop()
        self.delivery_recorder.stop()
        try:
            self.run(self.registry.aclose(), timeout=5)
            self.run(self.webhook_session.close(), timeout=5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.db.dispose()


async def _on_loop(factory: Callable[..., T], *args: Any) -> T:
    """Build something that must be created inside the running event loop (aiohttp sessions)."""
    return factory(*args)


_runtime: WorkerRuntime | None = None
_runtime_pid: int | None = None
_lock = threading.Lock()
_completion_recorder: CompletionRecorder | None = None


def use_completion_recorder(recorder: CompletionRecorder) -> None:
    """Called by the generate task's module when it is imported (before any runtime is built), so
    that the runtime, which that module uses, need not import it back."""
    global _completion_recorder
    _completion_recorder = recorder


def get_runtime(settings: Settings | None = None) -> WorkerRuntime:
    global _runtime, _runtime_pid
    if _runtime is not None and _runtime_pid == os.getpid():
        return _runtime
    with _lock:
        if _runtime is None or _runtime_pid != os.getpid():
            _runtime = WorkerRuntime(settings or get_settings(), _completion_recorder)
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
