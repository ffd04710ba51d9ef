"""The simulator's Anthropic Message Batches API (``messages.batches.create|retrieve|results|
cancel``): the batches, their processing and scripts are ``batches.py``'s, shared with OpenAI's."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from llmq.simulator import text
from llmq.simulator.batches import (
    CUSTOM_ID,
    WINDOW_S,
    BatchStore,
    SimBatch,
    anthropic_error,
    ok_json,
    process,
)
from llmq.simulator.text import InvalidRequest, dumps, new_id


def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def _anthropic_public(batch: SimBatch, origin: str) -> dict[str, Any]:
    ended = batch.ended_at is not None
    counts = batch.counts or {
        "processing": len(batch.lines),
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    return {
        "id": batch.id, "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
        "request_counts": counts, "ended_at": _iso(batch.ended_at), "created_at": _iso(batch.created),
        "expires_at": _iso(batch.created + WINDOW_S), "archived_at": None,
        "cancel_initiated_at": _iso(batch.ended_at) if batch.cancelled else None,
        "results_url": f"{origin}/v1/messages/batches/{batch.id}/results" if ended else None,
    }  # fmt: skip


def anthropic_routes(app: web.Application, state_key: Any, store_key: Any) -> None:
    def _origin(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    async def create(request: web.Request) -> web.Response:
        store: BatchStore = request.app[store_key]
        try:
            body = await request.json()
        except ValueError:
            return anthropic_error(400, "invalid_request_error", "body is not JSON")
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return anthropic_error(400, "invalid_request_error", "requests: must be a non-empty list")
        seen: set[str] = set()
        for i, entry in enumerate(requests):
            custom_id = entry.get("custom_id") if isinstance(entry, dict) else None
            if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id) or custom_id in seen:
                return anthropic_error(
                    400, "invalid_request_error", f"requests.{i}.custom_id: invalid or repeated"
                )
            if not isinstance(entry.get("params"), dict):
                return anthropic_error(
                    400, "invalid_request_error", f"requests.{i}.params: must be an object"
                )
            try:
                text.parse_anthropic({**entry["params"], "stream": False})
            except InvalidRequest as err:
                return anthropic_error(400, "invalid_request_error", f"requests.{i}.params: {err.message}")
            seen.add(custom_id)
        model = str(requests[0]["params"].get("model", ""))
        batch = SimBatch(
            new_id("msgbatch_"), "anthropic", model, requests, time.time(), store.script_for(model)
        )
        store.batches[batch.id] = batch
        return ok_json(_anthropic_public(batch, _origin(request)))

    def _batch(request: web.Request) -> SimBatch | None:
        store: BatchStore = request.app[store_key]
        batch = store.batches.get(request.match_info["batch_id"])
        if batch is None or batch.api != "anthropic":
            return None
        process(request.app[state_key], store, batch)
        return batch

    async def retrieve(request: web.Request) -> web.Response:
        batch = _batch(request)
        if batch is None:
            return anthropic_error(404, "not_found_error", "message batch not found")
        return ok_json(_anthropic_public(batch, _origin(request)))

    async def results(request: web.Request) -> web.Response:
        batch = _batch(request)
        if batch is None:
            return anthropic_error(404, "not_found_error", "message batch not found")
        if batch.ended_at is None:
            return anthropic_error(400, "invalid_request_error", "the batch is still processing")
        body = "".join(dumps(r) + "\n" for r in batch.results)
        return web.Response(text=body, content_type="application/binary")

    async def cancel(request: web.Request) -> web.Response:
        batch = _batch(request)
        if batch is None:
            return anthropic_error(404, "not_found_error", "message batch not found")
        if batch.ended_at is None:
            batch.cancelled = True
            process(request.app[state_key], request.app[store_key], batch)
        return ok_json(_anthropic_public(batch, _origin(request)))

    app.router.add_post("/v1/messages/batches", create)
    app.router.add_get("/v1/messages/batches/{batch_id}", retrieve)
    app.router.add_get("/v1/messages/batches/{batch_id}/results", results)
    app.router.add_post("/v1/messages/batches/{batch_id}/cancel", cancel)
