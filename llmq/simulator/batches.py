"""The simulator's batch APIs: OpenAI's Files + Batch API and Anthropic's Message Batches API,
faithful enough that the unmodified SDKs drive them (``files.create``, ``batches.create|
retrieve|list|cancel``, ``files.content``; ``messages.batches.create|retrieve|results``).

Routes::

    POST /v1/files                      multipart: file, purpose        → file object
    GET  /v1/files/{id}   GET /v1/files/{id}/content
    POST /v1/batches                    {input_file_id, endpoint, completion_window, metadata}
    GET  /v1/batches      GET /v1/batches/{id}      POST /v1/batches/{id}/cancel
    POST /v1/messages/batches           {requests: [{custom_id, params}]}
    GET  /v1/messages/batches/{id}      GET /v1/messages/batches/{id}/results   (JSONL)
    POST /_sim/batches                  {"model", "processing_s", "expire_after_lines"}

A batch is processed ``processing_s`` after its creation (0.5 s unless the model's batch script
says otherwise), when it is next read. Each line is answered as the normal endpoint answers it,
request surface included (tools, JSON output, stop, seed, n, images: ``surface.py``), and takes
its model's next scripted step (``/_sim/script``, as a normal request does): ``ok`` answers it,
an error fault makes the line an error (OpenAI: an error-file line with that status and body;
Anthropic: an ``errored`` result), ``hang``/``drop`` a 500, ``invalid_json`` an answer of
broken JSON. With ``expire_after_lines: n`` only the first ``n`` lines run and the batch
expires: the others are ``batch_expired`` (OpenAI) / ``expired`` (Anthropic). Every line
that runs counts as a request of its model in ``/_sim/stats``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from llmq.simulator import faults, surface, surface_wire, text
from llmq.simulator.text import InvalidRequest, dumps, new_id

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
WINDOW_S = 24 * 3600
DEFAULT_PROCESSING_S = 0.5


@dataclass(frozen=True)
class BatchScript:
    processing_s: float = DEFAULT_PROCESSING_S
    expire_after_lines: int | None = None


@dataclass
class SimFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class SimBatch:
    id: str
    api: str  # "openai" | "anthropic"
    model: str
    lines: list[dict[str, Any]]  # OpenAI: the input lines; Anthropic: the requests
    created: float
    script: BatchScript
    metadata: dict[str, str] | None = None
    input_file_id: str = ""
    errors: list[dict[str, Any]] | None = None  # validation errors (OpenAI: status failed)
    status: str = "in_progress"
    ended_at: float | None = None
    cancelled: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


class BatchStore:
    def __init__(self) -> None:
        self.files: dict[str, SimFile] = {}
        self.batches: dict[str, SimBatch] = {}
        self.scripts: dict[str, BatchScript] = {}

    def clear(self) -> None:
        self.files.clear()
        self.batches.clear()
        self.scripts.clear()

    def script_for(self, model: str) -> BatchScript:
        return self.scripts.get(model, BatchScript())


def _now() -> int:
    return int(time.time())


def _oa_error(status: int, message: str, param: str | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=dumps(faults.openai_error_body(message, "invalid_request_error", None, param)),
        content_type="application/json",
    )


def anthropic_error(status: int, err_type: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        text=dumps(faults.anthropic_error_body(err_type, message, new_id("req_"))),
        content_type="application/json",
    )


def ok_json(body: Any) -> web.Response:
    return web.Response(text=dumps(body), content_type="application/json")


# --- running the lines ----------------------------------------------------------------------


def _run_line(state: Any, api: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` of one line, as the normal endpoint would answer it (no streaming)."""
    parse = text.parse_openai if api == "openai" else text.parse_anthropic
    ask = surface.openai_surface if api == "openai" else surface.anthropic_surface
    model = body.get("model") if isinstance(body.get("model"), str) else ""
    record = state.stats.begin(model)
    status = 500
    try:
        try:
            plain = {**body, "stream": False}
            parsed = surface.with_surface(parse(plain), ask(plain))
        except InvalidRequest as err:
            status = 400
            if api == "openai":
                return status, faults.openai_error_body(
                    err.message, "invalid_request_error", err.code, err.param
                )
            return status, faults.anthropic_error_body("invalid_request_error", err.message, new_id("req_"))
        step = state.scripts.next_step(parsed.model)
        if step is not None and step.fault not in ("ok", "invalid_json", "hang", "drop", "stream_drop"):
            status, err_body, _ = faults.fault_error(
                api, step, parsed.model, parsed.prompt_tokens, new_id("req_")
            )
            return status, err_body
        if step is not None and step.fault not in ("ok", "invalid_json"):
            status = 500
            return status, (
                faults.openai_error_body("The server had an error processing your request.", "server_error")
                if api == "openai"
                else faults.anthropic_error_body("api_error", "Internal server error", new_id("req_"))
            )
        if parsed.surface is not None:  # tools, JSON output, stop, seed, n, images
            invalid_json = step is not None and step.fault == "invalid_json"
            _, answer = surface_wire.reply(api == "openai", parsed, state.config.reply_words, invalid_json)
            assert answer is not None
            status = 200
            return status, answer
        words, cut = text.reply_words(parsed.last_user_text, state.config.reply_words, parsed.max_tokens)
        reply = " ".join(words)
        status = 200
        if api == "openai":
            return status, text.openai_completion(parsed, reply, len(words), cut)
        return status, text.anthropic_message(parsed, reply, len(words), cut)
    finally:
        state.stats.end(record, status)


def process(state: Any, store: BatchStore, batch: SimBatch) -> None:
    """End the batch if its time has come: run its lines and write its results."""
    if batch.ended_at is not None or batch.status == "failed":
        return
    if not batch.cancelled and time.time() < batch.created + batch.script.processing_s:
        return
    limit = batch.script.expire_after_lines
    expired = limit is not None or batch.cancelled
    ran = 0 if batch.cancelled else (len(batch.lines) if limit is None else min(limit, len(batch.lines)))
    batch.ended_at = time.time()
    if batch.api == "openai":
        _end_openai(state, store, batch, ran, expired)
    else:
        _end_anthropic(state, batch, ran)


def _end_openai(state: Any, store: BatchStore, batch: SimBatch, ran: int, expired: bool) -> None:
    output: list[str] = []
    errors: list[str] = []
    for i, line in enumerate(batch.lines):
        if i >= ran:
            code = "batch_cancelled" if batch.cancelled else "batch_expired"
            message = "This request could not be executed before the completion window expired."
            errors.append(dumps({
                "id": new_id("batch_req_"), "custom_id": line["custom_id"], "response": None,
                "error": {"code": code, "message": message},
            }))  # fmt: skip
            continue
        status, body = _run_line(state, "openai", line["body"])
        entry = dumps({
            "id": new_id("batch_req_"), "custom_id": line["custom_id"],
            "response": {"status_code": status, "request_id": new_id("req_"), "body": body}, "error": None,
        })  # fmt: skip
        (output if status == 200 else errors).append(entry)
    batch.counts = {"total": len(batch.lines), "completed": len(output), "failed": len(errors)}
    for lines, attr in ((output, "output_file_id"), (errors, "error_file_id")):
        if lines:
            stored = SimFile(new_id("file-"), f"{batch.id}_{attr}.jsonl", "batch_output",
                             ("\n".join(lines) + "\n").encode(), _now())  # fmt: skip
            store.files[stored.id] = stored
            setattr(batch, attr, stored.id)
    batch.status = "cancelled" if batch.cancelled else ("expired" if expired else "completed")


def _end_anthropic(state: Any, batch: SimBatch, ran: int) -> None:
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    for i, request in enumerate(batch.lines):
        if i >= ran:
            kind = "canceled" if batch.cancelled else "expired"
            batch.results.append({"custom_id": request["custom_id"], "result": {"type": kind}})
            counts[kind] += 1
            continue
        status, body = _run_line(state, "anthropic", request["params"])
        if status == 200:
            result: dict[str, Any] = {"type": "succeeded", "message": body}
            counts["succeeded"] += 1
        else:
            result = {"type": "errored", "error": body}
            counts["errored"] += 1
        batch.results.append({"custom_id": request["custom_id"], "result": result})
    batch.counts = counts
    batch.status = "ended"


# --- OpenAI ---------------------------------------------------------------------------------


def _openai_public(batch: SimBatch) -> dict[str, Any]:
    created = int(batch.created)
    ended = int(batch.ended_at) if batch.ended_at else None
    status = batch.status
    return {
        "id": batch.id, "object": "batch", "endpoint": "/v1/chat/completions",
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "input_file_id": batch.input_file_id, "completion_window": "24h", "status": status,
        "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
        "created_at": created, "in_progress_at": created, "expires_at": created + WINDOW_S,
        "finalizing_at": ended, "completed_at": ended if status == "completed" else None,
        "failed_at": created if status == "failed" else None,
        "expired_at": ended if status == "expired" else None,
        "cancelling_at": ended if batch.cancelled else None,
        "cancelled_at": ended if status == "cancelled" else None,
        "request_counts": batch.counts or {"total": len(batch.lines), "completed": 0, "failed": 0},
        "metadata": batch.metadata, "model": batch.model,
    }  # fmt: skip


def _validate_lines(data: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            errors.append({"code": "invalid_json_line", "line": number, "message": "not valid JSON"})
            continue
        custom_id = line.get("custom_id") if isinstance(line, dict) else None
        if not isinstance(custom_id, str) or custom_id in seen:
            errors.append(
                {"code": "duplicate_custom_id", "line": number, "message": "custom_id missing or repeated"}
            )
        elif line.get("method") != "POST" or line.get("url") != "/v1/chat/completions":
            errors.append(
                {"code": "invalid_url", "line": number, "message": "url must be /v1/chat/completions"}
            )
        elif not isinstance(line.get("body"), dict):
            errors.append({"code": "invalid_body", "line": number, "message": "body must be an object"})
        else:
            seen.add(custom_id)
            lines.append(line)
    return lines, errors


def openai_routes(app: web.Application, state_key: Any, store_key: Any) -> None:
    async def upload(request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload, web.FileField) or not isinstance(purpose, str):
            return _oa_error(400, "'file' and 'purpose' are required", "file")
        stored = SimFile(new_id("file-"), upload.filename, purpose, upload.file.read(), _now())
        request.app[store_key].files[stored.id] = stored
        return ok_json(stored.public())

    def _file(request: web.Request) -> SimFile | None:
        found: SimFile | None = request.app[store_key].files.get(request.match_info["file_id"])
        return found

    async def get_file(request: web.Request) -> web.Response:
        found = _file(request)
        return ok_json(found.public()) if found else _oa_error(404, "No such File object")

    async def file_content(request: web.Request) -> web.Response:
        found = _file(request)
        if found is None:
            return _oa_error(404, "No such File object")
        return web.Response(body=found.data, content_type="application/octet-stream")

    async def create(request: web.Request) -> web.Response:
        store: BatchStore = request.app[store_key]
        try:
            body = await request.json()
        except ValueError:
            return _oa_error(400, "body is not JSON")
        found = store.files.get(str(body.get("input_file_id")))
        if found is None:
            return _oa_error(404, f"No such File object: {body.get('input_file_id')}", "input_file_id")
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return _oa_error(400, "endpoint must be /v1/chat/completions and completion_window 24h")
        lines, errors = _validate_lines(found.data)
        models = {line["body"].get("model") for line in lines}
        if len(models) > 1:
            errors.append({"code": "mixed_models", "line": None, "message": "one model per batch"})
        model = str(next(iter(models), ""))
        batch = SimBatch(new_id("batch_"), "openai", model, lines, time.time(), store.script_for(model),
                         metadata=body.get("metadata"), input_file_id=found.id)  # fmt: skip
        if errors or not lines:
            batch.errors = errors or [{"code": "empty_file", "line": None, "message": "no requests"}]
            batch.status = "failed"
        store.batches[batch.id] = batch
        return ok_json(_openai_public(batch))

    def _batch(request: web.Request) -> SimBatch | None:
        store: BatchStore = request.app[store_key]
        batch = store.batches.get(request.match_info["batch_id"])
        if batch is None or batch.api != "openai":
            return None
        process(request.app[state_key], store, batch)
        return batch

    async def retrieve(request: web.Request) -> web.Response:
        batch = _batch(request)
        return ok_json(_openai_public(batch)) if batch else _oa_error(404, "No such Batch object")

    async def cancel(request: web.Request) -> web.Response:
        batch = _batch(request)
        if batch is None:
            return _oa_error(404, "No such Batch object")
        if batch.ended_at is None and batch.status != "failed":
            batch.cancelled = True
            process(request.app[state_key], request.app[store_key], batch)
        return ok_json(_openai_public(batch))

    async def listing(request: web.Request) -> web.Response:
        store: BatchStore = request.app[store_key]
        limit = int(request.query.get("limit", "20"))
        batches = [b for b in reversed(list(store.batches.values())) if b.api == "openai"][:limit]
        for batch in batches:
            process(request.app[state_key], store, batch)
        data = [_openai_public(b) for b in batches]
        return ok_json({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None, "has_more": False})  # fmt: skip

    app.router.add_post("/v1/files", upload)
    app.router.add_get("/v1/files/{file_id}", get_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    app.router.add_post("/v1/batches", create)
    app.router.add_get("/v1/batches", listing)
    app.router.add_get("/v1/batches/{batch_id}", retrieve)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel)


def control_routes(app: web.Application, store_key: Any) -> None:
    async def script(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        model = body.get("model") if isinstance(body, dict) else None
        processing = body.get("processing_s", DEFAULT_PROCESSING_S) if isinstance(body, dict) else None
        expire = body.get("expire_after_lines") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            return web.json_response({"error": "'model' must be a non-empty string"}, status=400)
        if not isinstance(processing, int | float) or isinstance(processing, bool) or processing < 0:
            return web.json_response({"error": "'processing_s' must be a number >= 0"}, status=400)
        if expire is not None and (not isinstance(expire, int) or isinstance(expire, bool) or expire < 0):
            return web.json_response({"error": "'expire_after_lines' must be an integer >= 0"}, status=400)
        request.app[store_key].scripts[model] = BatchScript(float(processing), expire)
        return web.json_response({"ok": True, "model": model})

    async def listing(request: web.Request) -> web.Response:
        store: BatchStore = request.app[store_key]
        model = request.query.get("model")
        data = [
            {"id": b.id, "api": b.api, "model": b.model, "lines": len(b.lines), "status": b.status,
             "custom_ids": [line["custom_id"] for line in b.lines]}
            for b in store.batches.values() if model is None or b.model == model
        ]  # fmt: skip
        return web.json_response({"data": data})

    app.router.add_post("/_sim/batches", script)
    app.router.add_get("/_sim/batches", listing)
