"""``GET /v1/usage``: the tenant's calls, failures, tokens and cost per group, from the rollup
(``models/usage.py``)."""

from __future__ import annotations

from datetime import date, timedelta

from flask import Blueprint, Response, current_app, g, jsonify, request

from llmq.api.auth import require_tenant
from llmq.api.context import app_db
from llmq.api.errors import ApiError
from llmq.api.usage_schemas import MAX_DAYS, UsageQuery
from llmq.models.base import utcnow
from llmq.models.usage import UnknownGroup, parse_group_by, usage_report

bp = Blueprint("usage", __name__)


def default_range(start: date | None, end: date | None) -> tuple[date, date]:
    """The current month (UTC) up to today, unless given; a lone ``to`` starts on its month's 1st."""
    today = utcnow().date()
    end = end or (today if start is None or start <= today else start)
    start = start or end.replace(day=1)
    return start, end


@bp.get("/v1/usage")
@require_tenant
def usage() -> Response:
    query = UsageQuery.model_validate(request.args.to_dict())
    start, end = default_range(query.start, query.end)
    if end < start:
        raise ApiError(422, "'to' is before 'from'", type="validation_error")
    if end - start >= timedelta(days=MAX_DAYS):
        raise ApiError(422, f"at most {MAX_DAYS} days per query", type="validation_error")
    keys = current_app.extensions["llmq.providers"].usage.metadata_keys
    try:
        group_by = parse_group_by(query.group_by, keys)
    except UnknownGroup as exc:
        raise ApiError(422, str(exc), type="validation_error") from None
    with app_db().session() as session:
        report = usage_report(session, g.tenant.id, start, end, group_by)
    return jsonify(report.public())
