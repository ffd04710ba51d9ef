"""A batch's output and error files, written as OpenAI writes them, a chunk of lines at a time.

Output line (a line whose job completed)::

    {"id": "batch_req_…", "custom_id": "…", "error": null,
     "response": {"status_code": 200, "request_id": "…", "body": <chat.completion>}}

Error file: a job that failed has its ``response`` with the status and OpenAI's error body; a line
that never ran (refused when read, cancelled, expired, never read before the batch ended) has
``"response": null`` and ``"error": {"code", "message"}``. Every line of the input is in exactly
one of the two files. The jobs are read with a server-side cursor (``yield_per``), so memory holds
one chunk of rows whatever the batch's size; the order of the lines is not the input's (OpenAI
does not promise it either).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmq.models.batch_lines import custom_id_of
from llmq.models.batch_tables import Batch, BatchLineError, StoredFile
from llmq.models.files import FileStore, new_file_id
from llmq.models.openai_shapes import chat_completion_of, error_body_of, error_status_of
from llmq.models.state import JobStatus
from llmq.models.statements import JOBS

_READ = [
    JOBS.c[name]
    for name in (
        "id",
        "status",
        "model",
        "served_by",
        "result_text",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "result_extra",
        "error_type",
        "error_message",
        "request_id",
        "created_at",
        "completed_at",
    )
] + [JOBS.c.metadata.label("metadata_")]
UNFINISHED_MESSAGES = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed: the batch was cancelled.",
}


@dataclass
class Results:
    """The files written (ids None when empty) and what they hold."""

    output_file_id: str | None
    output_bytes: int
    error_file_id: str | None
    error_bytes: int
    completed: int  # lines of the output file
    failed: int  # lines of the error file

    @property
    def total(self) -> int:
        return self.completed + self.failed


class _JsonLines:
    """A ``.part`` file lines are appended to; it exists only once a line was written."""

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.file_id = new_file_id()
        self.lines = 0
        self.bytes = 0
        self._handle: IO[bytes] | None = None

    def write(self, line: dict[str, Any]) -> None:
        if self._handle is None:
            self._handle = open(self.store.part_path(self.file_id), "wb")
        data = json.dumps(line, separators=(",", ":")).encode() + b"\n"
        self._handle.write(data)
        self.lines += 1
        self.bytes += len(data)

    def close(self) -> str | None:
        if self._handle is None:
            return None
        self._handle.close()
        self.store.publish(self.file_id)
        return self.file_id


def _request_line_id(job_id: str) -> str:
    return "batch_req_" + job_id.removeprefix("job_")


def job_line(row: Any) -> tuple[bool, dict[str, Any]]:
    """``(completed, line)`` of one line job."""
    line: dict[str, Any] = {
        "id": _request_line_id(row.id),
        "custom_id": (row.metadata_ or {}).get("custom_id"),
        "response": None,
        "error": None,
    }
    request_id = row.request_id or row.id
    if row.status == JobStatus.COMPLETED.value:
        line["response"] = {"status_code": 200, "request_id": request_id, "body": chat_completion_of(row)}
        return True, line
    if row.status == JobStatus.FAILED.value:
        line["response"] = {
            "status_code": error_status_of(row),
            "request_id": request_id,
            "body": error_body_of(row),
        }
    else:  # cancelled (by the batch's cancel or expiry), or, in a race, not ended
        code = row.error_type if row.status == JobStatus.CANCELLED.value else "batch_expired"
        line["error"] = {"code": code, "message": row.error_message or UNFINISHED_MESSAGES.get(code, "")}
    return False, line


def _unread_lines(store: FileStore, source: StoredFile, offset: int) -> Iterator[bytes]:
    with open(store.path(source.storage_name), "rb") as handle:
        handle.seek(offset)
        for raw in handle:
            if raw.strip():
                yield raw


def write_results(
    session: Session, store: FileStore, batch: Batch, *, unread_code: str | None, chunk: int = 500
) -> Results:
    """Write the batch's output and error files from its jobs, its refused lines and, when the
    batch ended before its input was read whole, its unread lines (as ``unread_code``)."""
    output, errors = _JsonLines(store), _JsonLines(store)
    try:
        rows = session.execute(
            select(*_READ).where(JOBS.c.batch_id == batch.id).execution_options(yield_per=chunk)
        )
        for row in rows:
            completed, line = job_line(row)
            (output if completed else errors).write(line)
        refused = session.scalars(
            select(BatchLineError)
            .where(BatchLineError.batch_id == batch.id)
            .execution_options(yield_per=chunk)
        )
        for refusal in refused:
            errors.write(
                {
                    "id": f"batch_req_{batch.id.removeprefix('batch_')}_line{refusal.line}",
                    "custom_id": refusal.custom_id,
                    "response": None,
                    "error": {"code": refusal.code, "message": refusal.message, "line": refusal.line},
                }
            )
        if unread_code is not None and not batch.expanded:
            source = session.get(StoredFile, batch.input_file_id)
            assert source is not None
            for number, raw in enumerate(
                _unread_lines(store, source, batch.bytes_read), batch.lines_read + 1
            ):
                errors.write(
                    {
                        "id": f"batch_req_{batch.id.removeprefix('batch_')}_line{number}",
                        "custom_id": custom_id_of(raw),
                        "response": None,
                        "error": {"code": unread_code, "message": UNFINISHED_MESSAGES[unread_code]},
                    }
                )
    except BaseException:
        for part in (output, errors):
            part.close()
            store.discard(part.file_id)
        raise
    return Results(output.close(), output.bytes, errors.close(), errors.bytes, output.lines, errors.lines)
