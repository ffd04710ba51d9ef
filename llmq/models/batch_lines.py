"""A batch's input lines made into jobs, a chunk per transaction.

Each line of the input is ``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
"body": <chat completions request>}``. A valid line becomes a job as ``POST /v1/jobs`` makes one
(``create_jobs`` writes the same rows as ``create_job``, a chunk per INSERT: the same records,
retries, budgets and limits), with priority ``bulk``, its ``custom_id`` in its metadata and the
Idempotency-Key ``<batch>:<sha256(custom_id)>`` (a custom_id repeated in the file is refused,
not run twice). A line that cannot become a job is a :class:`BatchLineError` row, listed in the
batch's error file and counted failed.

The chunk, its jobs, its refused lines and the batch's new read position commit together, so a
chunk retried after a crash starts where the last commit left off and makes no job twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StrictFloat, StrictInt, StrictStr, ValidationError, model_validator
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from llmq.models.batch_tables import Batch, BatchLineError, StoredFile
from llmq.models.files import FileStore
from llmq.models.keys import model_allowed
from llmq.models.openai_shapes import llmq_model
from llmq.models.records import NewJob
from llmq.models.request_surface import ChatMessage, RequestOptions, message_dict
from llmq.models.submit import create_jobs
from llmq.models.tables import ApiKey

CHAT_COMPLETIONS = "/v1/chat/completions"
MAX_CUSTOM_ID = 512
DEADLINE_AFTER_WINDOW_S = 120.0


class ChatRequest(RequestOptions):
    """The chat completions request of a line: what a job can carry — the messages of
    ``POST /v1/jobs`` (text, content parts with images, tool calls and tool results) and its
    options (tools, tool_choice, response_format, stop, seed, top_p, n). Anything else is refused
    by name, so nothing is silently dropped. A ``developer`` message is a ``system`` one, as in
    ``POST /v1/chat/completions``."""

    model: Annotated[StrictStr, Field(min_length=1, max_length=190)]
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=1000)]
    max_tokens: Annotated[StrictInt, Field(ge=1, le=32_768)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1, le=32_768)] | None = None
    temperature: Annotated[StrictFloat | StrictInt, Field(ge=0, le=2)] | None = None
    user: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")] | None = None
    stream: Literal[False] | None = None

    @model_validator(mode="before")
    @classmethod
    def _developer_is_system(cls, body: Any) -> Any:
        if isinstance(body, dict) and isinstance(body.get("messages"), list):
            messages = [
                {**m, "role": "system"} if isinstance(m, dict) and m.get("role") == "developer" else m
                for m in body["messages"]
            ]
            body = {**body, "messages": messages}
        return body


@dataclass(frozen=True)
class LineRules:
    """What decides whether a line may run, fixed for the whole expansion."""

    known_model: Callable[[str], bool]  # the provider of an llmq model id is configured
    allowed_models: tuple[str, ...] | None  # the batch's key's allow-list (None: every model)
    max_attempts: int
    timeout_s: float  # a line job's deadline (expand_chunk: what is left of the window)


class Refused(Exception):
    def __init__(self, code: str, message: str, custom_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.custom_id = custom_id


def custom_id_of(raw: bytes) -> str | None:
    """The custom_id of a line, if it has one (for lines that were never run)."""
    try:
        value = json.loads(raw).get("custom_id")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str) else None


def parse_line(raw: bytes, batch_id: str, rules: LineRules) -> tuple[str, NewJob]:
    """``(custom_id, job)`` of one input line, or :class:`Refused` saying why not."""
    try:
        line = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Refused("invalid_json", "the line is not valid JSON") from None
    if not isinstance(line, dict):
        raise Refused("invalid_request", "the line must be a JSON object")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        raise Refused("invalid_custom_id", f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters")
    if line.get("method") != "POST":
        raise Refused("invalid_method", "method must be POST", custom_id)
    if line.get("url") != CHAT_COMPLETIONS:
        raise Refused("invalid_url", f"url must be {CHAT_COMPLETIONS}, the batch's endpoint", custom_id)
    try:
        body = ChatRequest.model_validate(line.get("body"))
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Refused(
            "invalid_request", f"body.{where}: {first['msg']}" if where else first["msg"], custom_id
        ) from None
    model = llmq_model(body.model)
    if not rules.known_model(model):
        raise Refused("model_not_found", f"the model {body.model!r} does not exist", custom_id)
    if not model_allowed(rules.allowed_models, model):
        raise Refused("model_not_allowed", f"this key may not use model {body.model!r}", custom_id)
    return custom_id, NewJob(
        model=model,
        messages=[message_dict(m) for m in body.messages],
        request_options=body.options_dict(),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=float(body.temperature) if body.temperature is not None else None,
        user=body.user,
        metadata={"batch_id": batch_id, "custom_id": custom_id},
        timeout_s=rules.timeout_s,
        priority="bulk",
        batch_id=batch_id,
    )


def idempotency_key_of(batch_id: str, custom_id: str) -> str:
    return f"{batch_id}:{hashlib.sha256(custom_id.encode()).hexdigest()}"


@dataclass
class Chunk:
    """What one chunk did: the jobs to enqueue once committed, and whether the input is done."""

    job_ids: list[str] = field(default_factory=list)
    refused: int = 0
    done: bool = False
    status: str = ""


def allowed_models_of(session: Session, api_key_id: str | None) -> tuple[str, ...] | None:
    if api_key_id is None:
        return None
    allowed = session.scalar(select(ApiKey.allowed_models).where(ApiKey.id == api_key_id))
    return tuple(allowed) if allowed is not None else None


def expand_chunk(
    session: Session, batch_id: str, store: FileStore, rules: LineRules, *, chunk_lines: int, now: datetime
) -> Chunk:
    """Make the next ``chunk_lines`` lines of the batch's input into jobs, in this transaction.
    The batch row is locked for it, so two deliveries of the expansion never read the same lines."""
    batch = session.scalars(select(Batch).where(Batch.id == batch_id).with_for_update()).first()
    if batch is None or batch.expanded or batch.status not in ("validating", "in_progress"):
        return Chunk(done=True, status=batch.status if batch else "")
    if now >= batch.expires_at:  # the tick expires it: what is not read yet is never run
        return Chunk(done=True, status=batch.status)
    # A line may wait for its turn as long as the batch's window lasts (bulk work yields to
    # interactive work), not a job's default deadline; a little past it, so the batch's expiry,
    # not the sweeper's deadline, ends the lines still waiting (as ``batch_expired``).
    window_left = (batch.expires_at - now).total_seconds() + DEADLINE_AFTER_WINDOW_S
    rules = replace(rules, timeout_s=window_left)
    source = session.get(StoredFile, batch.input_file_id)
    assert source is not None
    chunk = Chunk(status=batch.status)
    errors: list[dict[str, Any]] = []
    parsed: list[tuple[int, str, NewJob, str]] = []  # line, custom_id, job, Idempotency-Key
    line_number = batch.lines_read
    with open(store.path(source.storage_name), "rb") as handle:
        handle.seek(batch.bytes_read)
        for _ in range(chunk_lines):
            raw = handle.readline()
            if not raw:
                chunk.done = True
                break
            line_number += 1
            if not raw.strip():
                continue  # a blank line (a trailing newline, say) is no request
            try:
                custom_id, new = parse_line(raw, batch_id, rules)
            except Refused as refused:
                errors.append(
                    _error_row(batch_id, line_number, refused.custom_id, refused.code, refused.message)
                )
                continue
            parsed.append((line_number, custom_id, new, idempotency_key_of(batch_id, custom_id)))
        if not chunk.done:
            chunk.done = not handle.peek(1)  # nothing after this chunk's last line
        batch.bytes_read = handle.tell()
    made = create_jobs(
        session,
        tenant_id=batch.tenant_id,
        jobs=[(new, key) for _, _, new, key in parsed],
        now=now,
        max_attempts=rules.max_attempts,
        api_key_id=batch.api_key_id,
        request_id=batch.request_id,
    )
    for number, custom_id, _, key in parsed:
        job_id = made.pop(key, None)  # the first line with the key made the job; the rest did not
        if job_id is None:
            message = f"custom_id {custom_id!r} is not unique in the batch"
            errors.append(_error_row(batch_id, number, custom_id, "duplicate_custom_id", message))
        else:
            chunk.job_ids.append(job_id)
    if errors:
        session.execute(insert(BatchLineError), errors)
    chunk.refused = len(errors)
    batch.lines_read = line_number
    batch.refused += len(errors)
    batch.total += len(chunk.job_ids) + len(errors)
    batch.expanded = chunk.done
    if batch.status == "validating":
        batch.status = chunk.status = "in_progress"
        batch.in_progress_at = now
    batch.updated_at = now
    return chunk


def _error_row(batch_id: str, line: int, custom_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"batch_id": batch_id, "line": line, "custom_id": custom_id, "code": code, "message": message}
