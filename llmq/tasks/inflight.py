"""The provider calls a worker process is making right now, and the two threads that watch them.

- :class:`LeaseKeeper` renews, in one UPDATE, the lease of every job this process is running,
  every ``lease_s / 3``. A job whose lease it can no longer renew was cancelled or taken over:
  its call is cancelled, so the worker stops waiting on the provider.
- :class:`CancelListener` hears ``POST /v1/jobs/<id>/cancel`` on Redis pub/sub and cancels the
  call at once (the lease keeper is the fallback if a message is missed).

On a warm shutdown (SIGTERM, a deploy) every call is cancelled and each job is handed back to
the queue by the finisher that records its call, so nothing waits for a lease to expire.

:class:`CallCapacity` bounds the calls a process has started and not yet recorded: when it is
full, the Celery pool threads stop taking jobs (the broker keeps them for other workers).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from datetime import timedelta
from typing import Any

import redis
import structlog

from llmq.config.redis_url import RedisTarget
from llmq.models.base import utcnow
from llmq.models.claim import renew_leases
from llmq.models.db import Database
from llmq.workers.keys import CANCEL_CHANNEL
from llmq.workers.ratelimit import RateLimiter
from llmq.workers.redis_client import redis_client

logger = structlog.get_logger(__name__)


class CallCapacity:
    """At most ``limit`` calls started and not yet recorded in this process."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._used = 0
        self._cond = threading.Condition()

    def take(self) -> None:
        """Block until there is room for one more call."""
        with self._cond:
            while self._used >= self.limit:
                self._cond.wait()
            self._used += 1

    def give(self, n: int = 1) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every call taken was given back; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._used == 0, timeout)

    def __len__(self) -> int:
        return self._used


class InFlightCalls:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, tuple[str, Future[Any]]] = {}
        self._slots: dict[str, tuple[str, str]] = {}  # job id → (model, slot holder)
        self._must_end_by: dict[str, float] = {}  # job id → time.monotonic() deadline
        self._overdue: set[str] = set()
        self.shutting_down = False

    def add(
        self,
        job_id: str,
        lease_token: str,
        future: Future[Any],
        slot: tuple[str, str] | None = None,
        *,
        must_end_by: float | None = None,
    ) -> None:
        with self._lock:
            self._calls[job_id] = (lease_token, future)
            if slot is not None:
                self._slots[job_id] = slot
            if must_end_by is not None:
                self._must_end_by[job_id] = must_end_by

    def remove(self, job_id: str) -> None:
        with self._lock:
            self._calls.pop(job_id, None)
            self._slots.pop(job_id, None)
            self._must_end_by.pop(job_id, None)
            self._overdue.discard(job_id)

    def stop_overdue(self, now: float | None = None) -> list[str]:
        """Cancel the calls past their deadline (a safety net: the event loop enforces it)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            late = [job_id for job_id, end in self._must_end_by.items() if end < now]
            self._overdue.update(late)
            futures = [self._calls[job_id][1] for job_id in late if job_id in self._calls]
        for future in futures:
            future.cancel()
        return late

    def overdue(self, job_id: str) -> bool:
        """Was this call stopped for outliving its deadline (rather than cancelled)?"""
        with self._lock:
            return job_id in self._overdue

    def slots(self) -> dict[str, list[str]]:
        """Concurrency slots held by the calls in flight, by model (their leases are renewed)."""
        with self._lock:
            by_model: dict[str, list[str]] = {}
            for model, holder in self._slots.values():
                by_model.setdefault(model, []).append(holder)
            return by_model

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            entry = self._calls.get(job_id)
        return bool(entry and entry[1].cancel())

    def cancel_all(self) -> int:
        with self._lock:
            futures = [future for _, future in self._calls.values()]
        return sum(1 for future in futures if future.cancel())

    def snapshot(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(job_id, token) for job_id, (token, _) in self._calls.items()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)


class LeaseKeeper(threading.Thread):
    def __init__(
        self, db: Database, inflight: InFlightCalls, lease_s: float, limiter: RateLimiter | None = None
    ) -> None:
        super().__init__(name="llmq-lease-keeper", daemon=True)
        self.db = db
        self.limiter = limiter
        self.inflight = inflight
        self.lease_s = lease_s
        self.interval = max(0.2, lease_s / 3)
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.renew_once()
            except Exception as exc:  # the database may be briefly away; try again next round
                logger.warning("lease_renewal_failed", error=type(exc).__name__)

    def renew_once(self) -> int:
        for job_id in self.inflight.stop_overdue():
            logger.warning("call_overdue_stopped", job_id=job_id)
        if self.limiter is not None:
            for model, holders in self.inflight.slots().items():
                self.limiter.renew_slot(model, holders)
        held = self.inflight.snapshot()
        if not held:
            return 0
        now = utcnow()
        with self.db.transaction() as session:
            renewed = renew_leases(session, held, until=now + timedelta(seconds=self.lease_s))
        for job_id, _ in held:
            if job_id not in renewed and self.inflight.cancel(job_id):
                logger.info("lease_lost_call_cancelled", job_id=job_id)
        return len(renewed)

    def stop(self) -> None:
        self._stopping.set()


class CancelListener(threading.Thread):
    def __init__(self, target: RedisTarget, inflight: InFlightCalls) -> None:
        super().__init__(name="llmq-cancel-listener", daemon=True)
        self.target = target
        self.inflight = inflight
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            # A new client each round: behind Sentinel it subscribes on whichever node is master now.
            client = redis_client(self.target, socket_timeout=5, socket_connect_timeout=2)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(CANCEL_CHANNEL)
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        job_id = message["data"].decode()
                        if self.inflight.cancel(job_id):
                            logger.info("cancelled_call_stopped", job_id=job_id)
            except Exception as exc:  # broker restarting: reconnect after a pause
                logger.warning("cancel_listener_reconnecting", error=type(exc).__name__)
            finally:  # the next round subscribes afresh: this one's connection must not linger
                pubsub.close()
                client.close()
            self._stopping.wait(1.0)  # only reached after an error, or when stopping

    def stop(self) -> None:
        self._stopping.set()


def publish_cancel(client: redis.Redis, job_id: str) -> None:
    client.publish(CANCEL_CHANNEL, job_id)
