"""``/openapi.json``, generated from the pydantic schemas in ``schemas.py``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from llmq import __version__
from llmq.api import admin_openapi, batch_openapi, chat_openapi
from llmq.api.schemas import ErrorOut, Health, JobCreate, JobList, JobOut, Readiness
from llmq.api.usage_schemas import USAGE_PARAMETERS, UsageOut

REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _json(ErrorOut, "error") for code in codes}


def build_openapi() -> dict[str, Any]:
    inputs: tuple[type[BaseModel], ...] = (
        JobCreate,
        *admin_openapi.INPUTS,
        *chat_openapi.INPUTS,
        *batch_openapi.INPUTS,
    )
    outputs: tuple[type[BaseModel], ...] = (JobOut, JobList, ErrorOut, Health, Readiness, UsageOut)
    _, defs = models_json_schema(
        [(m, "validation") for m in inputs]
        + [(m, "serialization") for m in (*outputs, *admin_openapi.OUTPUTS, *batch_openapi.OUTPUTS)],
        ref_template=REF,
    )
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llmq",
            "version": __version__,
            "description": "LLM generation as asynchronous jobs.",
        },
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "admin": {"type": "http", "scheme": "bearer", "description": "LLMQ_ADMIN_TOKEN"},
            },
        },
        "paths": {
            "/v1/jobs": {
                "post": {
                    "summary": "Submit a job",
                    "security": secured,
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 255},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref(JobCreate)}},
                    },
                    "responses": {
                        "202": _json(JobOut, "accepted: the job is stored and queued"),
                        "200": _json(JobOut, "an earlier job with the same Idempotency-Key"),
                        **_errors(400, 401, 403, 409, 413, 415, 422, 429, 503),
                    },
                },
                "get": {
                    "summary": "List the tenant's jobs, newest first",
                    "security": secured,
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": ["queued", "processing", "completed", "failed", "cancelled"],
                            },
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _json(JobList, "a page of jobs"), **_errors(401, 422)},
                },
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "summary": "Read a job",
                    "security": secured,
                    "parameters": [job_id],
                    "responses": {"200": _json(JobOut, "the job"), **_errors(401, 404)},
                }
            },
            "/status/{job_id}": {
                "get": {
                    "summary": "Read a job (alias)",
                    "security": secured,
                    "parameters": [job_id],
                    "responses": {"200": _json(JobOut, "the job"), **_errors(401, 404)},
                }
            },
            "/v1/jobs/{job_id}/attempts": {
                "get": {
                    "summary": "Every provider attempt of a job",
                    "security": secured,
                    "parameters": [job_id],
                    "responses": {"200": {"description": "the attempts"}, **_errors(401, 404)},
                }
            },
            "/v1/jobs/{job_id}/cancel": {
                "post": {
                    "summary": "Cancel a job",
                    "security": secured,
                    "parameters": [job_id],
                    "responses": {"200": _json(JobOut, "the cancelled job"), **_errors(401, 404, 409)},
                }
            },
            "/v1/usage": {
                "get": {
                    "summary": "Calls, failures, tokens and cost per group, from the usage rollup",
                    "security": secured,
                    "parameters": USAGE_PARAMETERS,
                    "responses": {
                        "200": _json(UsageOut, "usage per group, and the total"),
                        **_errors(401, 422),
                    },
                }
            },
            "/v1/providers": {
                "get": {
                    "summary": "Each provider/model: breaker state, error rate, latency, rate-limit use",
                    "security": secured,
                    "responses": {"200": {"description": "the providers"}, **_errors(401)},
                }
            },
            "/v1/jobs/{job_id}/webhooks": {
                "get": {
                    "summary": "The job's webhook events and every delivery attempt",
                    "security": secured,
                    "parameters": [job_id],
                    "responses": {"200": {"description": "the events"}, **_errors(401, 404)},
                }
            },
            "/v1/jobs/{job_id}/webhooks/redeliver": {
                "post": {
                    "summary": "Send the job's final event again, with the same webhook-id",
                    "security": secured,
                    "parameters": [job_id],
                    "responses": {"202": {"description": "redelivery queued"}, **_errors(401, 404, 409)},
                }
            },
            **admin_openapi.admin_paths(_errors),
            **chat_openapi.chat_paths(_ref),
            **batch_openapi.batch_paths(_errors),
            "/health": {"get": {"summary": "Process alive", "responses": {"200": _json(Health, "alive")}}},
            "/ready": {
                "get": {
                    "summary": "Database and broker reachable",
                    "responses": {"200": _json(Readiness, "ready"), "503": _json(Readiness, "not ready")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition format"}},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}
            },
        },
    }
