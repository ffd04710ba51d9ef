"""Who is looking at /ui: a signed session cookie, never a key.

A browser cannot send ``Authorization: Bearer`` when a person follows a link, so /ui has a login
form: the person pastes their API key (or the admin token) once, and the answer sets a cookie that
holds a signed reference to it — the key's id, or a fingerprint of the admin token — never the key
itself. Every request checks the reference again, so a revoked or expired key, or a changed admin
token, ends the session at once.

The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it) and
Secure when the request came over HTTPS (or a proxy says it did); it is signed with itsdangerous
under ``ui_secret_key`` and expires after ``SESSION_MAX_AGE_S``. The only POSTs (login, logout)
carry a CSRF token as well: the login form's is double-submitted (a signed cookie and the form
field must match), the logout form's is the one stored in the session.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from flask import Flask, current_app, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.wrappers import Response

from llmq.api.context import app_db, app_settings
from llmq.models.base import utcnow
from llmq.models.tables import ApiKey, Tenant
from llmq.models.tenants import tenant_for_key

SESSION_COOKIE = "llmq_ui"
CSRF_COOKIE = "llmq_ui_csrf"
SESSION_MAX_AGE_S = 8 * 3600
CSRF_MAX_AGE_S = 3600
# Set by the gunicorn master when ui_secret_key is unset, so every worker of one `llmq api`
# signs with the same random key (llmq/api/gunicorn_conf.py).
GENERATED_SECRET_ENV = "LLMQ_UI_GENERATED_SECRET"


@dataclass(frozen=True)
class Viewer:
    """The person logged in: a tenant (through one of its keys) or the admin (every tenant)."""

    csrf: str
    tenant_id: str | None = None
    tenant_name: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.tenant_id is None


def _secret(app: Flask) -> str:
    secret = app.extensions.get("llmq.ui_secret")
    if secret is None:
        configured = app.extensions["llmq.settings"].ui_secret_key
        secret = configured or os.environ.get(GENERATED_SECRET_ENV) or secrets.token_urlsafe(32)
        app.extensions["llmq.ui_secret"] = secret
    return str(secret)


def _serializer(salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_secret(current_app), salt=salt)


def _admin_fingerprint(token: str) -> str:
    return hashlib.sha256(b"llmq-ui-admin:" + token.encode()).hexdigest()[:32]


def _over_https() -> bool:
    """HTTPS here or at the proxy in front (which says so in X-Forwarded-Proto): trusting the
    header can only make the cookie stricter, never weaker."""
    return request.is_secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _set_cookie(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/ui", httponly=True, samesite="Strict", secure=_over_https()
    )


# --- login CSRF (double submit) -------------------------------------------------------------------
def login_csrf(response: Response, token: str) -> None:
    _set_cookie(response, CSRF_COOKIE, _serializer("llmq.ui.csrf").dumps(token), CSRF_MAX_AGE_S)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def login_csrf_ok(form_token: str) -> bool:
    try:
        expected = _serializer("llmq.ui.csrf").loads(
            request.cookies.get(CSRF_COOKIE, ""), max_age=CSRF_MAX_AGE_S
        )
    except BadSignature:
        return False
    return isinstance(expected, str) and bool(form_token) and hmac.compare_digest(expected, form_token)


# --- the session ------------------------------------------------------------------------------------
def log_in(secret: str) -> dict[str, str] | None:
    """The session for an API key or the admin token; None when it is neither."""
    secret = secret.strip()
    admin_token = _admin_token()
    csrf = new_csrf_token()
    if admin_token and hmac.compare_digest(secret.encode(), admin_token.encode()):
        return {"admin": _admin_fingerprint(admin_token), "csrf": csrf}
    if not secret:
        return None
    with app_db().session() as session:
        found = tenant_for_key(session, secret)
        if found is None or not _key_usable(found[1]):
            return None
        return {"key": found[1].id, "csrf": csrf}


def start_session(response: Response, data: dict[str, str]) -> None:
    _set_cookie(response, SESSION_COOKIE, _serializer("llmq.ui.session").dumps(data), SESSION_MAX_AGE_S)
    response.delete_cookie(CSRF_COOKIE, path="/ui")


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/ui", samesite="Strict", httponly=True)


def current_viewer() -> Viewer | None:
    """The viewer of this request's session cookie, checked against the database now."""
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    try:
        data = _serializer("llmq.ui.session").loads(raw, max_age=SESSION_MAX_AGE_S)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
        return None
    if "admin" in data:
        admin_token = _admin_token()
        if admin_token and hmac.compare_digest(str(data["admin"]), _admin_fingerprint(admin_token)):
            return Viewer(csrf=data["csrf"])
        return None
    with app_db().session() as session:
        key = session.get(ApiKey, str(data.get("key")))
        if key is None or not _key_usable(key):
            return None
        tenant = session.get(Tenant, key.tenant_id)
        if tenant is None:
            return None
        return Viewer(csrf=data["csrf"], tenant_id=tenant.id, tenant_name=tenant.name)


def _key_usable(key: ApiKey) -> bool:
    if key.revoked_at is not None:
        return False
    expires_at = key.expires_at
    return expires_at is None or expires_at.replace(tzinfo=None) > utcnow().replace(tzinfo=None)


def _admin_token() -> str | None:
    """The admin token's value (a SecretStr in the settings, so that it never shows in a repr)."""
    token = app_settings().admin_token
    return token.get_secret_value() if token is not None else None
