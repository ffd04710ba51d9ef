"""The Batch API's part of ``/openapi.json`` (``/v1/files``, ``/v1/batches``); ``openapi.py``
merges it in."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from llmq.api.batch_schemas import BatchCreate, BatchList, BatchOut, FileList, FileOut

REF = "#/components/schemas/{model}"
INPUTS: tuple[type[BaseModel], ...] = (BatchCreate,)
OUTPUTS: tuple[type[BaseModel], ...] = (BatchOut, BatchList, FileOut, FileList)


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    ref = {"$ref": REF.format(model=model.__name__)}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _page(limit_max: int) -> list[dict[str, Any]]:
    return [
        {"name": "after", "in": "query", "schema": {"type": "string"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": limit_max}},
    ]


def batch_paths(errors: Any) -> dict[str, Any]:
    """The ``paths`` of the Batch API; ``errors(*codes)`` gives the error responses."""
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    upload = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": ["batch"]},
                    },
                }
            }
        },
    }
    return {
        "/v1/files": {
            "post": {
                "summary": "Upload a batch's JSONL input (streamed; at most 50,000 lines, 200 MB)",
                "security": secured,
                "requestBody": upload,
                "responses": {"200": _json(FileOut, "the file"), **errors(400, 401)},
            },
            "get": {
                "summary": "List the tenant's files, newest first",
                "security": secured,
                "parameters": [
                    *_page(10_000),
                    {"name": "purpose", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": _json(FileList, "a page of files"), **errors(400, 401, 404)},
            },
        },
        "/v1/files/{file_id}": {
            "get": {
                "summary": "Read a file's object",
                "security": secured,
                "parameters": [_path("file_id")],
                "responses": {"200": _json(FileOut, "the file"), **errors(401, 404)},
            },
            "delete": {
                "summary": "Delete a file (409 while a running batch reads it)",
                "security": secured,
                "parameters": [_path("file_id")],
                "responses": {"200": {"description": "deleted"}, **errors(401, 404, 409)},
            },
        },
        "/v1/files/{file_id}/content": {
            "get": {
                "summary": "A file's bytes (a batch's input, output or error JSONL)",
                "security": secured,
                "parameters": [_path("file_id")],
                "responses": {
                    "200": {"description": "the bytes", "content": {"application/jsonl": {}}},
                    **errors(401, 404),
                },
            }
        },
        "/v1/batches": {
            "post": {
                "summary": "Create a batch of chat completions from an uploaded file",
                "security": secured,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": REF.format(model="BatchCreate")}}},
                },
                "responses": {"200": _json(BatchOut, "the batch, validating"), **errors(400, 401)},
            },
            "get": {
                "summary": "List the tenant's batches, newest first",
                "security": secured,
                "parameters": _page(100),
                "responses": {"200": _json(BatchList, "a page of batches"), **errors(400, 401, 404)},
            },
        },
        "/v1/batches/{batch_id}": {
            "get": {
                "summary": "Read a batch: its status and request_counts",
                "security": secured,
                "parameters": [_path("batch_id")],
                "responses": {"200": _json(BatchOut, "the batch"), **errors(401, 404)},
            }
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": {
                "summary": "Cancel a batch: its queued lines are cancelled, running ones finish",
                "security": secured,
                "parameters": [_path("batch_id")],
                "responses": {"200": _json(BatchOut, "the batch, cancelling"), **errors(401, 404, 409)},
            }
        },
    }
