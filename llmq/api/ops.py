"""Operations endpoints: liveness, readiness (database and broker), metrics, the OpenAPI spec."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from llmq.api.context import app_db
from llmq.api.metrics import render_metrics
from llmq.api.openapi import build_openapi

bp = Blueprint("ops", __name__)


@bp.get("/health")
def health() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready() -> tuple[Response, int]:
    checks: dict[str, str] = {}
    try:
        app_db().ping()
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means "not reachable"
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        current_app.extensions["llmq.redis"].ping()  # the broker's Redis, 1 s timeouts
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ok" if ok else "unavailable", "checks": checks}), 200 if ok else 503


@bp.get("/metrics")
def metrics() -> Response:
    return render_metrics(current_app)


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(build_openapi())
