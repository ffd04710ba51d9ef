"""Sentry for the API and the workers, and the one place that decides what an event may carry.

An event must say where it broke (the stack, the exception type, the request's method and path,
the ``job_id`` as a tag) and must never carry what a tenant sent us or the secrets we hold: no
prompt, no result, no API key, no webhook secret. So the SDK is told not to collect them
(``send_default_pii=False``, ``include_local_variables=False``, ``max_request_body_size="never"``)
and :func:`scrub_event` runs on every event before it leaves the process, removing what an
integration might still have attached: request bodies, cookies, query strings, headers outside a
short allow-list, frame variables, breadcrumb data, the ``[parameters: ...]`` SQLAlchemy puts in
a database error's message (a failed INSERT of a job lists its prompt there), and anything shaped
like an llmq API key or webhook secret wherever it appears.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

JOB_TAG = "job_id"
FILTERED = "[Filtered]"
# Request headers an event keeps; every other one (Authorization, Cookie, X-Api-Key, ...) goes.
KEPT_HEADERS = frozenset({"content-type", "content-length", "user-agent", "host", "x-request-id", "accept"})
_SECRETS = re.compile(r"llmq_sk_[A-Za-z0-9_\-]+|whsec_[A-Za-z0-9+/=]+|Bearer\s+\S+", re.IGNORECASE)
_SQL_PARAMETERS = re.compile(r"\[parameters: .*?\](?=\s*(?:\(Background on this error|\Z))", re.DOTALL)
_JOB_ID = re.compile(r"^job_[A-Za-z0-9]+$")


def scrub_text(text: str) -> str:
    """A message or exception value without SQL parameters or anything shaped like a secret."""
    text = _SQL_PARAMETERS.sub("[parameters: [Filtered]]", text)
    return _SECRETS.sub(FILTERED, text)


def _scrub_strings(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: _scrub_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_strings(v) for v in value]
    return value


def _scrub_request(request: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    if "method" in request:
        kept["method"] = request["method"]
    if "url" in request:
        kept["url"] = str(request["url"]).split("?", 1)[0]
    headers = request.get("headers")
    if isinstance(headers, dict):
        kept["headers"] = {k: v for k, v in headers.items() if k.lower() in KEPT_HEADERS}
    return kept


def scrub_event(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sentry's ``before_send``: the event with nothing a tenant sent and no secret in it."""
    if isinstance(event.get("request"), dict):
        event["request"] = _scrub_request(event["request"])
    event.pop("user", None)
    for exception in (event.get("exception") or {}).get("values") or []:
        for frame in (exception.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    for thread in (event.get("threads") or {}).get("values") or []:
        for frame in (thread.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    breadcrumbs = event.get("breadcrumbs")
    values = breadcrumbs.get("values") if isinstance(breadcrumbs, dict) else breadcrumbs
    for crumb in values or []:
        crumb.pop("data", None)
    return _scrub_strings(event)  # type: ignore[no-any-return]


def init_sentry(dsn: str | None, *, component: str) -> bool:
    """Sentry for Flask and Celery, only when a DSN is configured. Returns whether it is on."""
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.flask import FlaskIntegration

    sentry_sdk.init(
        dsn=dsn,
        integrations=[FlaskIntegration(), CeleryIntegration()],
        server_name=component,
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        before_send=scrub_event,  # type: ignore[arg-type]
        before_send_transaction=scrub_event,  # type: ignore[arg-type]
    )
    if component == "worker":
        _tag_tasks_with_their_job()
    return True


def _tag_tasks_with_their_job() -> None:
    """Each task runs in its own Sentry scope (the Celery integration makes one around the task):
    tag it with the job it works on (``llmq.generate(job_id)``), so an error names its job."""
    from celery.signals import task_prerun

    def tag(task: Any = None, args: Any = None, **_: Any) -> None:
        job_id = args[0] if args else None
        if isinstance(job_id, str) and _JOB_ID.match(job_id):
            set_job_tag(job_id)

    task_prerun.connect(tag, weak=False)


def set_job_tag(job_id: str) -> None:
    """Tag the current scope's events with this job (a no-op while Sentry is off)."""
    import sentry_sdk

    sentry_sdk.set_tag(JOB_TAG, job_id)


def capture_exception(exc: BaseException) -> None:
    """Report an exception an error handler answered (Flask only reports unhandled ones)."""
    import sentry_sdk

    sentry_sdk.capture_exception(exc)


def tag_job_requests(app: Flask) -> None:
    """A request about one job (``/v1/jobs/<job_id>/...``, ``/ui/jobs/<job_id>``) tags its events
    with that job."""
    from flask import request

    @app.before_request
    def _tag() -> None:
        job_id = (request.view_args or {}).get("job_id")
        if isinstance(job_id, str):
            set_job_tag(job_id)
