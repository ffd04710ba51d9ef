"""``/ui``: a small read-only jobs page for people, server-rendered (Jinja2, autoescaped: prompts
and results are shown as text even when they hold HTML), behind a tenant's API key or the admin
token (``ui_session.py`` explains the login).

A tenant sees its own jobs; the admin sees every tenant's, with a tenant column. A job of
another tenant is a 404, as in the JSON API. Pages are HTML, errors too: the API's JSON error
handlers are for API clients, not for a browser on /ui.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import structlog
from flask import Blueprint, Response, redirect, render_template, request, url_for
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from llmq.api.context import app_db
from llmq.api.jobs import _decode_cursor, _encode_cursor
from llmq.api.ui_session import (
    Viewer,
    current_viewer,
    end_session,
    log_in,
    login_csrf,
    login_csrf_ok,
    new_csrf_token,
    start_session,
)
from llmq.models.outbox import events_for_job
from llmq.models.state import JobStatus
from llmq.models.submit import attempts_of, list_jobs
from llmq.models.tables import Job, Tenant
from llmq.observability.sentry import capture_exception

logger = structlog.get_logger(__name__)
bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates")

PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
STATUSES = [s.value for s in JobStatus]
# The pages need no script and load nothing from elsewhere: say so to the browser.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class JobsPageQuery(BaseModel):
    """The list page's query string: ``?status=failed&limit=50&cursor=...``."""

    status: JobStatus | None = None
    cursor: str | None = Field(default=None, max_length=200)
    limit: int = Field(default=PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)


class LoginForm(BaseModel):
    key: str = Field(default="", max_length=1000)
    csrf: str = Field(default="", max_length=200)


@bp.app_template_filter("usd")
def _usd(value: Decimal | float | None) -> str:
    """A cost as the database holds it (up to 8 decimals), without trailing zeros; "—" unknown."""
    if value is None:
        return "—"
    text = f"{Decimal(value):.8f}".rstrip("0")
    return text + "00" if text.endswith(".") else text


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _page(template: str, status: int = 200, **context: Any) -> Response:
    return Response(render_template(f"ui/{template}", **context), status=status, mimetype="text/html")


def _login_page(error: str | None = None, status: int = 200) -> Response:
    token = new_csrf_token()
    response = _page("login.html", status, csrf=token, error=error, viewer=None)
    login_csrf(response, token)
    return response


@bp.get("/login")
def login_form() -> Response:
    return _login_page()


@bp.post("/login")
def login() -> BaseResponse:
    try:
        form = LoginForm.model_validate(request.form.to_dict())
    except ValidationError:
        return _login_page("That is not a valid API key or admin token.", 422)
    if not login_csrf_ok(form.csrf):
        return _login_page("Your form expired; please try again.", 400)
    data = log_in(form.key)
    if data is None:
        return _login_page("That is not a valid API key or admin token.", 401)
    response = redirect(url_for("ui.jobs"), 303)
    start_session(response, data)
    return response


@bp.post("/logout")
def logout() -> BaseResponse:
    viewer = current_viewer()
    if viewer is not None and request.form.get("csrf") != viewer.csrf:
        return _page("error.html", 400, viewer=viewer, message="Your form expired; please try again.")
    response = redirect(url_for("ui.login_form"), 303)
    end_session(response)
    return response


def _viewer_or_login() -> Viewer | BaseResponse:
    viewer = current_viewer()
    if viewer is None:
        return redirect(url_for("ui.login_form"), 303)
    return viewer


@bp.get("")
@bp.get("/")
def jobs() -> BaseResponse:
    viewer = _viewer_or_login()
    if isinstance(viewer, BaseResponse):
        return viewer
    try:
        query = JobsPageQuery.model_validate({k: v for k, v in request.args.items() if v})
    except ValidationError:
        return _page("error.html", 422, viewer=viewer, message="That filter is not one this page knows.")
    status = query.status.value if query.status else None
    cursor, limit = query.cursor, query.limit
    try:
        after = _decode_cursor(cursor) if cursor else None
    except Exception:  # a hand-edited cursor: start from the top
        after = None
    with app_db().session() as session:
        page, has_more = list_jobs(
            session, tenant_id=viewer.tenant_id, status=status, after=after, limit=limit
        )
        tenants: dict[str, str] = {}
        if viewer.is_admin and page:
            ids = {job.tenant_id for job in page}
            names = session.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(ids)))
            tenants = {tenant_id: name for tenant_id, name in names}
        rows = [_row(job, tenants) for job in page]
    next_cursor = _encode_cursor(page[-1]) if has_more else None
    return _page(
        "jobs.html",
        viewer=viewer,
        rows=rows,
        current_status=status,
        statuses=STATUSES,
        next_cursor=next_cursor,
        first_page=cursor is None,
        limit=limit if limit != PAGE_SIZE else None,
    )


def _row(job: Job, tenants: dict[str, str]) -> dict[str, Any]:
    return {
        "id": job.id,
        "tenant": tenants.get(job.tenant_id, job.tenant_id),
        "status": job.status,
        "model": job.model,
        "served_by": job.served_by,
        "cost_usd": job.cost_usd,
        "attempts": job.attempts,
        "created_at": job.created_at,
        "completed_at": job.completed_at,
    }


@bp.get("/jobs/<job_id>")
def job(job_id: str) -> BaseResponse:
    viewer = _viewer_or_login()
    if isinstance(viewer, BaseResponse):
        return viewer
    with app_db().session() as session:
        found = session.get(Job, job_id)
        if found is None or (viewer.tenant_id is not None and found.tenant_id != viewer.tenant_id):
            return _page("error.html", 404, viewer=viewer, message=f"No job {job_id}.")
        tenant = session.get(Tenant, found.tenant_id) if viewer.is_admin else None
        context: dict[str, Any] = {
            "job": _row(found, {found.tenant_id: tenant.name} if tenant else {}),
            "messages": [_shown(m) for m in found.messages or []],
            "result_text": found.result_text,
            "error": (found.error_type, found.error_message) if found.error_type else None,
            "webhook_url": found.webhook_url,
            "attempts": list(attempts_of(session, job_id)),
            "events": events_for_job(session, job_id),
        }
    return _page("job.html", viewer=viewer, **context)


@bp.route("/<path:rest>")
def not_found(rest: str) -> Response:
    return _page("error.html", 404, viewer=current_viewer(), message="There is no such page.")


@bp.errorhandler(Exception)
def _error(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _page("error.html", exc.code or 500, viewer=None, message=exc.name)
    logger.exception("ui_error", error=type(exc).__name__)
    capture_exception(exc)
    return _page("error.html", 500, viewer=None, message="Something went wrong; it has been reported.")


def _shown(message: dict[str, Any]) -> dict[str, str]:
    """A stored message as the job page shows it: its text, images and tool turns as notes."""
    content = message.get("content")
    if isinstance(content, list):
        content = "\n".join(
            str(part.get("text", "")) if part.get("type") == "text" else "[image]" for part in content
        )
    lines = [content] if content else []
    lines += [
        f"[tool call {c['function']['name']}({c['function']['arguments']})]"
        for c in message.get("tool_calls") or ()
    ]
    if message.get("tool_call_id"):
        lines.insert(0, f"[result of {message['tool_call_id']}]")
    return {"role": str(message.get("role", "")), "content": "\n".join(lines)}
