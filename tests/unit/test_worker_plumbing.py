"""The worker's in-process plumbing: the in-flight bound, the deadline watchdog, the batch writer
and the server-sent-events reader."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from functools import partial

import pytest
import redis

from llmq.config.redis_url import parse_redis_url
from llmq.tasks.batch import BatchWriter
from llmq.tasks.inflight import CANCEL_CHANNEL, CallCapacity, CancelListener, InFlightCalls, publish_cancel
from llmq.workers.providers.base import sse_data
from tests.integration.services import wait_for
from tests.sync import done
from tests.unit.conftest import REDIS_URL


def test_capacity_blocks_when_full_and_resumes_when_a_call_is_given_back() -> None:
    capacity = CallCapacity(2)
    capacity.take()
    capacity.take()
    took = threading.Event()

    def third() -> None:
        capacity.take()
        took.set()

    waiter = threading.Thread(target=third, daemon=True)
    waiter.start()
    assert not took.wait(0.2), "a full process must not take another call"
    capacity.give()
    assert took.wait(5), "a call given back makes room"
    assert len(capacity) == 2


def test_capacity_wait_idle_reports_whether_everything_was_given_back() -> None:
    capacity = CallCapacity(3)
    capacity.take()
    assert capacity.wait_idle(0.05) is False
    threading.Timer(0.05, capacity.give).start()
    assert capacity.wait_idle(5) is True


def test_a_call_past_its_deadline_is_stopped_and_marked_overdue() -> None:
    calls = InFlightCalls()
    late: Future[None] = Future()
    on_time: Future[None] = Future()
    now = time.monotonic()
    calls.add("job_late", "t1", late, must_end_by=now - 1)
    calls.add("job_on_time", "t2", on_time, must_end_by=now + 60)
    assert calls.stop_overdue(now) == ["job_late"]
    assert late.cancelled() and not on_time.cancelled()
    assert calls.overdue("job_late") and not calls.overdue("job_on_time")
    calls.remove("job_late")
    assert not calls.overdue("job_late")


def test_a_cancelled_call_is_not_mistaken_for_an_overdue_one() -> None:
    calls = InFlightCalls()
    future: Future[None] = Future()
    calls.add("job_1", "t", future, must_end_by=time.monotonic() + 60)
    assert calls.cancel("job_1")
    assert not calls.overdue("job_1")


def test_batch_writer_writes_everything_in_few_batches_and_keeps_items_across_a_failure() -> None:
    written: list[list[int]] = []
    failures = [RuntimeError("database away")]

    def write(batch: list[int]) -> None:
        if failures:
            raise failures.pop()
        written.append(list(batch))

    counted: list[int] = []
    writer: BatchWriter[int] = BatchWriter("test-writer", write, interval_s=0.01, on_written=counted.append)
    writer.start()
    for n in range(50):
        writer.put(n)
    writer.stop(timeout=10)
    assert not writer.is_alive()
    assert sorted(n for batch in written for n in batch) == list(range(50))
    assert sum(counted) == 50
    assert len(written) < 50  # batched, not one write per item


def test_batch_writer_flushes_what_is_queued_when_stopped() -> None:
    written: list[int] = []
    writer: BatchWriter[int] = BatchWriter("test-writer", written.extend, interval_s=60)
    writer.start()
    writer.put(1)
    writer.put(2)
    writer.stop(timeout=10)
    assert written == [1, 2]


async def _chunks(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _events(*chunks: bytes) -> list[bytes]:
    return [data async for data in sse_data(_chunks(*chunks))]


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b'data: {"a":1}\n\ndata: [DONE]\n\n'], [b'{"a":1}', b"[DONE]"]),
        ([b"data:x\ndata: y\n\n"], [b"x\ny"]),  # multi-line data, with or without the space
        ([b": keep-alive\nevent: message\nid: 7\ndata: z\n\n"], [b"z"]),
        ([b"data: last without a blank line"], [b"last without a blank line"]),
        ([b"\n\nevent: ping\n\n"], []),
        # an event split anywhere across reads, a line included
        ([b"da", b'ta: {"a"', b":1}\n", b"\nda", b"ta: 2\n\n"], [b'{"a":1}', b"2"]),
        # CRLF and CR line ends, a CRLF split between two reads
        ([b"data: a\r", b"\n\r\ndata: b\r\rdata: c\r\n\r\n"], [b"a", b"b", b"c"]),
        # a body that ends on a CR, with more than one line in its last read
        ([b"data: a\r\rdata: b\r"], [b"a", b"b"]),
    ],
)
def test_sse_data_yields_the_data_of_each_event(chunks: list[bytes], expected: list[bytes]) -> None:
    assert asyncio.run(_events(*chunks)) == expected


def test_the_startup_heap_is_kept_out_of_gc_and_later_garbage_is_still_collected() -> None:
    import gc
    import weakref

    from llmq.heap import keep_startup_heap_out_of_gc

    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector frees it

    try:
        keep_startup_heap_out_of_gc()
        assert gc.get_freeze_count() > 1000
        before = len(gc.get_objects())
        later = Node()
        gone = weakref.ref(later)
        del later
        gc.collect()
        assert gone() is None, "a cycle made after the freeze is still collected"
        assert len(gc.get_objects()) <= before + 100  # the frozen heap is not walked again
    finally:
        gc.unfreeze()


class _FailingCalls(InFlightCalls):
    """Calls whose cancel fails the first ``n`` times (a bug while handling a message)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.failures_left = n
        self.seen: list[str] = []

    def cancel(self, job_id: str) -> bool:
        self.seen.append(job_id)
        if self.failures_left > 0:
            self.failures_left -= 1
            raise RuntimeError("bug while cancelling")
        return False


def _has_seen(calls: _FailingCalls, count: int) -> bool:
    return len(calls.seen) == count


def test_the_cancel_listener_closes_its_subscription_before_it_subscribes_again(rdb: redis.Redis) -> None:
    calls = _FailingCalls(3)
    listener = CancelListener(parse_redis_url(REDIS_URL), calls)
    listener.start()
    try:
        wait_for(lambda: _subscribers(rdb) == 1, timeout=5, what="the subscription")
        for n in range(3):  # each message makes the handling fail
            publish_cancel(rdb, f"job_{n}")
            wait_for(partial(_has_seen, calls, n + 1), timeout=10, what=f"message {n}")
            wait_for(lambda: _subscribers(rdb) == 0, timeout=5, what="unsubscribed")
            wait_for(lambda: _subscribers(rdb) == 1, timeout=10, what="resubscribed")
        publish_cancel(rdb, "job_3")  # handled without an error, by the one live subscription
        wait_for(lambda: len(calls.seen) == 4, timeout=10, what="message 3")
        assert _subscribers(rdb) == 1, "one subscription, not one per error"
    finally:
        listener.stop()
        listener.join(5)


def _subscribers(rdb: redis.Redis) -> int:
    return int(done(rdb.pubsub_numsub(CANCEL_CHANNEL))[0][1])
