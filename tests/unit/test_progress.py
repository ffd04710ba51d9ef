"""Progress of streamed calls through the machine's real Redis (database 14): what a worker
writes, and what the API shows of it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import redis

from llmq.workers.progress import MAX_PARTIAL_CHARS, ProgressWriter, show_live_progress
from tests.sync import done


def _view(job_id: str, status: str = "processing", token: str | None = "tok-1") -> tuple[Any, dict[str, Any]]:
    job = SimpleNamespace(id=job_id, status=status, lease_token=token)
    return job, {"id": job_id, "progress": 0.0, "partial_text": None}


def test_the_latest_report_of_each_job_is_written_in_one_flush_and_shown(rdb: redis.Redis) -> None:
    writer = ProgressWriter(rdb, interval_s=60, ttl_s=30)
    writer.report("job_a", "tok-1", "Once", tokens=1, max_tokens=4)
    writer.report("job_a", "tok-1", "Once upon", tokens=2, max_tokens=4)
    writer.report("job_b", "tok-1", "x" * (MAX_PARTIAL_CHARS + 10), tokens=300, max_tokens=100)
    assert writer.flush() == 2
    assert writer.flush() == 0  # nothing new since
    assert 29_000 < done(rdb.pttl("llmq:progress:job_a")) <= 30_000
    a, b = _view("job_a"), _view("job_b")
    show_live_progress(rdb, [a, b])
    assert a[1] == {"id": "job_a", "progress": 0.5, "partial_text": "Once upon"}
    assert b[1]["progress"] == 0.99  # never shown as done while it runs
    assert len(b[1]["partial_text"]) == MAX_PARTIAL_CHARS


def test_a_report_is_shown_only_for_the_attempt_that_wrote_it_while_the_job_runs(rdb: redis.Redis) -> None:
    writer = ProgressWriter(rdb, interval_s=60)
    for job_id in ("job_retry", "job_done", "job_forgotten"):
        writer.report(job_id, "tok-1", "partial", tokens=1, max_tokens=2)
    writer.forget("job_forgotten")
    writer.flush()
    retried = _view("job_retry", token="tok-2")  # a later attempt holds the job now
    ended = _view("job_done", status="completed", token=None)
    forgotten = _view("job_forgotten")
    show_live_progress(rdb, [retried, ended, forgotten])
    for _, view in (retried, ended, forgotten):
        assert view["progress"] == 0.0 and view["partial_text"] is None


def test_without_redis_the_views_keep_what_the_row_says() -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    job, view = _view("job_a")
    show_live_progress(unreachable, [(job, view)])
    assert view == {"id": "job_a", "progress": 0.0, "partial_text": None}
