"""``GET /v1/providers``: each provider/model as the fleet sees it — breaker state, recent error
rate and latency (from the attempts of the last ``WINDOW_S`` seconds in the database), and the
current use of its rate limits (from Redis)."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify

from llmq.api.auth import require_tenant
from llmq.api.context import app_db
from llmq.models.base import utcnow
from llmq.models.stats import recent_attempts
from llmq.workers.breaker import CircuitBreakers
from llmq.workers.ratelimit import RateLimiter

bp = Blueprint("providers", __name__)

WINDOW_S = 300
SAMPLE = 20_000
FAILED = {"retryable_error", "permanent_error", "lost"}


def _percentile(values: list[int], q: float) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@bp.get("/v1/providers")
@require_tenant
def providers() -> Response:
    config = current_app.extensions["llmq.providers"]
    since = utcnow() - timedelta(seconds=WINDOW_S)
    with app_db().session() as session:
        rows = recent_attempts(session, since=since, limit=SAMPLE)
    calls: dict[str, list[tuple[str, int | None]]] = defaultdict(list)
    for model, outcome, latency in rows:
        calls[model].append((outcome, latency))
    breakers: CircuitBreakers = current_app.extensions["llmq.breakers"]
    limiter: RateLimiter = current_app.extensions["llmq.limiter"]
    prices = config.model_prices()
    data: list[dict[str, Any]] = []
    for model in sorted(set(config.models) | set(calls)):
        seen = [c for c in calls.get(model, []) if c[0] not in {"cached", "discarded", "interrupted"}]
        latencies = [latency for outcome, latency in seen if outcome == "success" and latency is not None]
        failures = sum(1 for outcome, _ in seen if outcome in FAILED)
        entry: dict[str, Any] = {
            "model": model,
            "provider": model.split("/", 1)[0],
            "calls_last_5m": len(seen),
            "error_rate": round(failures / len(seen), 4) if seen else None,
            "latency_ms_p50": _percentile(latencies, 0.50),
            "latency_ms_p95": _percentile(latencies, 0.95),
            # USD per million tokens of each kind, and the date the prices were taken.
            "price": price.public() if (price := prices.get(model)) is not None else None,
        }
        try:
            entry["breaker"] = breakers.snapshot(model)
            entry["limits"] = limiter.usage(model)
        except redis.RedisError as exc:
            entry["breaker"] = entry["limits"] = {"error": f"unavailable: {type(exc).__name__}"}
        data.append(entry)
    return jsonify({"object": "list", "prices_taken_on": _iso(config.prices.taken_on), "data": data})


def _iso(day: Any) -> str | None:
    return day.isoformat() if day is not None else None
