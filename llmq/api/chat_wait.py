"""Waiting on a chat completion's job, without holding a database connection.

Plain: the job's status is read (two columns by primary key, a session per look, the connection
back in the pool between looks) every 50 ms at first, growing by half each time up to
``chat_poll_max_s``: a quick answer is seen quickly and a long one costs about two reads a second.

Streamed: the text the worker keeps in Redis while the call streams (``workers/progress.py``,
written every ``LLMQ_PROGRESS_INTERVAL_S``, so deltas come that often) is read every
``STREAM_TICK_S``, and what it adds to what was sent goes out as a ``chat.completion.chunk``; the
job's status is read on the same growing schedule as a plain wait. A report counts only under the
lease token the job row holds, so an earlier attempt's text is never sent. When the final result
does not begin with what was streamed (an attempt broke mid-answer and the retry said something
else), the stream ends with an error event naming the job, whose result is then read at
``/v1/jobs/<id>``. A comment line goes out every ``KEEPALIVE_S`` while nothing else does, so
proxies keep the connection open.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import redis
import structlog

from llmq.api.chat_errors import job_error_body
from llmq.api.chat_shape import ChunkMaker, sse
from llmq.models.db import Database
from llmq.models.openai_shapes import choices_of, finish_reason_of, tool_calls_of
from llmq.models.submit import get_job
from llmq.models.tables import job_public
from llmq.models.watch import JobState, job_state
from llmq.workers.keys import PROGRESS_KEY

logger = structlog.get_logger(__name__)

FIRST_POLL_S = 0.05
STREAM_TICK_S = 0.1
KEEPALIVE_S = 15.0


@dataclass(frozen=True)
class Waiter:
    db: Database
    redis: redis.Redis
    tenant_id: str
    job_id: str
    deadline: float  # time.monotonic()
    poll_max_s: float

    def state(self) -> JobState | None:
        with self.db.session() as session:
            return job_state(session, self.tenant_id, self.job_id)

    def job(self) -> dict[str, Any]:
        with self.db.session() as session:
            return job_public(get_job(session, self.tenant_id, self.job_id))

    def wait(self) -> dict[str, Any] | None:
        """The job once it ended; None when the deadline came first."""
        delay = FIRST_POLL_S
        while True:
            state = self.state()
            if state is None or state.ended:
                return self.job()
            left = self.deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(delay, left))
            delay = min(delay * 1.5, self.poll_max_s)

    def progress(self, lease_token: str | None) -> str | None:
        """The streamed text so far of the attempt holding ``lease_token``."""
        if lease_token is None:
            return None
        try:
            raw = self.redis.get(PROGRESS_KEY.format(self.job_id))
        except redis.RedisError as exc:
            logger.warning("progress_read_failed", job_id=self.job_id, error=type(exc).__name__)
            return None
        if raw is None:
            return None
        report = json.loads(cast(bytes, raw))
        return str(report["text"]) if report.get("token") == lease_token else None


def stream_events(waiter: Waiter, chunks: ChunkMaker) -> Iterator[str]:
    """The Server-Sent Events of a streamed chat completion, from the first chunk to ``[DONE]``."""
    yield sse(chunks.delta({"role": "assistant", "content": "", "refusal": None}))
    sent = ""
    state = waiter.state()
    delay = FIRST_POLL_S
    next_state_at = time.monotonic() + delay
    quiet_since = time.monotonic()
    while state is not None and not state.ended:
        now = time.monotonic()
        if now >= waiter.deadline:
            yield sse({"error": _still_running(waiter.job_id)})
            return
        text = waiter.progress(state.lease_token if state.status == "processing" else None)
        if text is not None and len(text) > len(sent) and text.startswith(sent):
            yield sse(chunks.delta({"content": text[len(sent) :]}))
            sent, quiet_since = text, now
        elif now - quiet_since >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet_since = now
        if now >= next_state_at:
            state = waiter.state()
            delay = min(delay * 1.5, waiter.poll_max_s)
            next_state_at = now + delay
        time.sleep(STREAM_TICK_S)
    job = waiter.job()
    yield from _ending(job, sent, chunks)


def _ending(job: dict[str, Any], sent: str, chunks: ChunkMaker) -> Iterator[str]:
    """What follows the streamed text once the job ended: the rest of the first choice's text,
    every other choice whole (``n`` > 1: only the first one streams as it grows), the tool calls,
    each choice's ``finish_reason``, the usage if asked, ``[DONE]``."""
    if job["status"] != "completed":
        yield sse({"error": job_error_body(job)[1]})
        return
    choices = choices_of(job)
    first = choices[0].get("text") or ""
    if not first.startswith(sent):
        yield sse({"error": _diverged(job["id"])})
        return
    for choice in choices:
        index = choice["index"]
        text = (choice.get("text") or "")[len(sent) if index == 0 else 0 :]
        if index != 0:
            yield sse(chunks.delta({"role": "assistant", "content": ""}, index=index))
        if text:
            yield sse(chunks.delta({"content": text}, index=index))
        tool_calls = tool_calls_of(choice)
        if tool_calls:
            delta = [{"index": i, **call} for i, call in enumerate(tool_calls)]
            yield sse(chunks.delta({"tool_calls": delta}, index=index))
        yield sse(chunks.delta({}, finish_reason_of(choice), index=index))
    if chunks.include_usage:
        yield sse(chunks.usage(job))
    yield sse("[DONE]")


def _still_running(job_id: str) -> dict[str, Any]:
    return {
        "message": f"job {job_id} is still running at the wait deadline; read it at /v1/jobs/{job_id}",
        "type": "timeout",
        "param": None,
        "code": "job_still_running",
    }


def _diverged(job_id: str) -> dict[str, Any]:
    return {
        "message": f"job {job_id} was retried after part of its answer was streamed, and the retry "
        f"answered differently; read its result at /v1/jobs/{job_id}",
        "type": "api_error",
        "param": None,
        "code": "stream_diverged",
    }
