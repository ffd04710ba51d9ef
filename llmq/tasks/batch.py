"""A thread that writes items in batches: many small writes become one transaction.

Used for what a worker records after the fact and nobody waits on (webhook delivery attempts):
items are queued from any thread and written every ``interval_s``, or sooner when
``max_batch`` are waiting. With ``eager``, a batch is written as soon as there is anything to
write, and what arrives during a write makes the next batch (a group commit): no added latency
when idle, batches that grow with the load. That is how a worker records finished calls.
A failed flush is retried with the next one; the items stay queued.
When stopped, it writes what is queued, trying a few times before it gives up (the webhook
deliveries it records are then sent again by the sweeper, under the same id).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

logger = structlog.get_logger(__name__)

T = TypeVar("T")


class BatchWriter(threading.Thread, Generic[T]):
    def __init__(
        self,
        name: str,
        write: Callable[[list[T]], object],
        *,
        interval_s: float = 0.05,
        max_batch: int = 500,
        on_written: Callable[[int], None] | None = None,
        eager: bool = False,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._write = write
        self.interval_s = interval_s
        self.max_batch = max_batch
        self._on_written = on_written
        self.eager = eager
        self.tries_when_stopping = 3  # then the items are left to whoever recovers them
        self._items: list[T] = []
        self._cond = threading.Condition()
        self._stopping = False

    def put(self, item: T) -> None:
        with self._cond:
            self._items.append(item)
            if self.eager or len(self._items) >= self.max_batch:
                self._cond.notify()

    def run(self) -> None:
        failures_while_stopping = 0
        while True:
            with self._cond:
                if self.eager:
                    while not self._items and not self._stopping:
                        self._cond.wait()
                elif not self._stopping and len(self._items) < self.max_batch:
                    self._cond.wait(self.interval_s)
                batch, stopping = self._items[: self.max_batch], self._stopping
                del self._items[: len(batch)]
            if not batch:
                if stopping:
                    return
                continue
            try:
                self._write(batch)
            except Exception as exc:  # the database may be away: keep the items for the next try
                logger.warning(
                    "batch_write_failed", writer=self.name, items=len(batch), error=type(exc).__name__
                )
                with self._cond:
                    self._items[:0] = batch
                if stopping:
                    failures_while_stopping += 1
                    if failures_while_stopping >= self.tries_when_stopping:
                        logger.error("batch_writer_gave_up", writer=self.name, items=len(self))
                        return
                threading.Event().wait(min(1.0, self.interval_s * 10))
                continue
            if self._on_written is not None:
                self._on_written(len(batch))

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then end."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self.join(timeout)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
