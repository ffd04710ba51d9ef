"""Tenants and keys through the admin API, and what a key allows at submit: the tier's requests
per minute (429 with Retry-After), a key's own rpm, its allowed models, expiry, revocation,
rotation, a disabled tenant. Real Postgres and Redis behind the Flask app."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr

from llmq.api.app import create_app
from llmq.config.settings import DEFAULT_PROVIDERS_FILE, Settings
from llmq.models.base import isoformat, utcnow
from llmq.models.db import Database

ADMIN_TOKEN = "adm_" + "t" * 28
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def admin_app(settings: Settings, database: Database) -> Iterator[Flask]:
    flask_app = create_app(settings.model_copy(update={"admin_token": SecretStr(ADMIN_TOKEN)}))
    flask_app.testing = True
    yield flask_app
    flask_app.extensions["llmq.db"].dispose()


@pytest.fixture
def admin(admin_app: Flask) -> FlaskClient:
    return admin_app.test_client()


def _name(prefix: str = "acme") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _tenant(admin: FlaskClient, **fields: Any) -> dict[str, Any]:
    response = admin.post("/v1/admin/tenants", json={"name": _name(), **fields}, headers=ADMIN)
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json())


def _key(admin: FlaskClient, tenant: dict[str, Any], **fields: Any) -> tuple[dict[str, Any], dict[str, str]]:
    response = admin.post("/v1/admin/keys", json={"tenant": tenant["name"], **fields}, headers=ADMIN)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    return body, {"Authorization": f"Bearer {body['api_key']}"}


def _error(response: Any) -> dict[str, Any]:
    assert response.is_json, response.data[:200]
    return dict(response.get_json()["error"])


def test_the_admin_api_needs_the_admin_token_and_is_off_without_one(
    admin: FlaskClient, client: FlaskClient, auth: dict[str, str]
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, auth):
        response = admin.get("/v1/admin/tenants", headers=headers)
        assert response.status_code == 401 and _error(response)["type"] == "invalid_admin_token"
    off = client.get("/v1/admin/tenants", headers=ADMIN)
    assert off.status_code == 403 and _error(off)["type"] == "admin_disabled"


def test_a_tenant_is_created_on_a_tier_and_its_limits_changed(admin: FlaskClient) -> None:
    tenant = _tenant(admin, tier="pro")
    assert tenant["tier"] == "pro" and tenant["webhook_secret"].startswith("whsec_")
    assert tenant["rpm"] is None, "no override: the tier's 100 rpm applies"
    again = admin.post("/v1/admin/tenants", json={"name": tenant["name"]}, headers=ADMIN)
    assert again.status_code == 409
    unknown = admin.post("/v1/admin/tenants", json={"name": _name(), "tier": "platinum"}, headers=ADMIN)
    assert unknown.status_code == 422 and "known tiers" in _error(unknown)["message"]
    changed = admin.patch(f"/v1/admin/tenants/{tenant['id']}", json={"rpm": 7, "tier": "free"}, headers=ADMIN)
    assert changed.status_code == 200 and changed.get_json()["rpm"] == 7
    assert "webhook_secret" not in changed.get_json()
    cleared = admin.patch(f"/v1/admin/tenants/{tenant['name']}", json={"rpm": None}, headers=ADMIN)
    assert cleared.get_json()["rpm"] is None and cleared.get_json()["tier"] == "free"
    assert tenant["id"] in [t["id"] for t in admin.get("/v1/admin/tenants", headers=ADMIN).get_json()["data"]]
    assert admin.get("/v1/admin/tenants/nobody-here", headers=ADMIN).status_code == 404
    bad = admin.patch(f"/v1/admin/tenants/{tenant['id']}", json={"rpm": 0}, headers=ADMIN)
    assert bad.status_code == 422


def test_the_free_tier_takes_ten_jobs_a_minute_then_answers_429_with_retry_after(
    admin: FlaskClient,
) -> None:
    tenant = _tenant(admin)  # the shipped default tier: free, 10 rpm
    assert tenant["tier"] == "free"
    _, auth = _key(admin, tenant)
    codes = [admin.post("/v1/jobs", json={"prompt": "hi"}, headers=auth).status_code for _ in range(10)]
    assert codes == [202] * 10
    refused = admin.post("/v1/jobs", json={"prompt": "hi"}, headers=auth)
    assert refused.status_code == 429
    assert _error(refused)["type"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert admin.get("/v1/jobs", headers=auth).status_code == 200, "reading is not rate limited"
    other = _tenant(admin)
    _, other_auth = _key(admin, other)
    assert admin.post("/v1/jobs", json={"prompt": "hi"}, headers=other_auth).status_code == 202


def test_a_key_with_its_own_rpm_counts_alone(admin: FlaskClient) -> None:
    tenant = _tenant(admin, tier="unlimited", rpm=2)
    _, own = _key(admin, tenant, rpm=3)
    _, shared = _key(admin, tenant)
    assert [admin.post("/v1/jobs", json={"prompt": "a"}, headers=shared).status_code for _ in range(3)] == [
        202,
        202,
        429,
    ]
    assert [admin.post("/v1/jobs", json={"prompt": "a"}, headers=own).status_code for _ in range(4)] == [
        202,
        202,
        202,
        429,
    ]


def test_a_key_may_ask_only_for_its_allowed_models(admin: FlaskClient) -> None:
    tenant = _tenant(admin, tier="unlimited")
    key, auth = _key(admin, tenant, allowed_models=["local/*", "anthropic/claude-3-5-haiku-latest"])
    assert key["allowed_models"] == ["local/*", "anthropic/claude-3-5-haiku-latest"]
    ok = admin.post("/v1/jobs", json={"prompt": "a", "model": "local/any-model"}, headers=auth)
    assert ok.status_code == 202
    refused = admin.post("/v1/jobs", json={"prompt": "a", "model": "openai/gpt-4o"}, headers=auth)
    assert refused.status_code == 403 and _error(refused)["type"] == "model_not_allowed"
    default = admin.post("/v1/jobs", json={"prompt": "a"}, headers=auth)  # the default openai model
    assert default.status_code == 403
    fallback = admin.post(
        "/v1/jobs", json={"prompt": "a", "model": "local/m", "fallbacks": ["openai/gpt-4o"]}, headers=auth
    )
    assert fallback.status_code == 403, "a fallback the key may not use is refused too"


def test_an_expired_key_is_refused_from_the_instant_it_expires(admin: FlaskClient) -> None:
    tenant = _tenant(admin, tier="unlimited")
    key, auth = _key(admin, tenant, expires_at=isoformat(utcnow() + timedelta(hours=1)))
    assert admin.get("/v1/jobs", headers=auth).status_code == 200  # cached now
    past = admin.patch(
        f"/v1/admin/keys/{key['id']}",
        json={"expires_at": isoformat(utcnow() - timedelta(seconds=1))},
        headers=ADMIN,
    )
    assert past.get_json()["status"] == "expired"
    refused = admin.get("/v1/jobs", headers=auth)
    assert refused.status_code == 401 and _error(refused)["type"] == "key_expired"


def test_a_revoked_key_is_refused_at_once_and_listed_only_with_inactive_keys(admin: FlaskClient) -> None:
    tenant = _tenant(admin, tier="unlimited")
    key, auth = _key(admin, tenant, name="ci")
    assert admin.get("/v1/jobs", headers=auth).status_code == 200
    revoked = admin.post(f"/v1/admin/keys/{key['id']}/revoke", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.get_json()["status"] == "revoked"
    refused = admin.post("/v1/jobs", json={"prompt": "a"}, headers=auth)
    assert refused.status_code == 401 and _error(refused)["type"] == "key_revoked"
    active = admin.get(f"/v1/admin/keys?tenant={tenant['name']}", headers=ADMIN).get_json()["data"]
    every = admin.get(f"/v1/admin/keys?tenant={tenant['id']}&include_inactive=true", headers=ADMIN)
    assert key["id"] not in [k["id"] for k in active]
    assert [k["id"] for k in every.get_json()["data"]] == [key["id"]]
    assert "api_key" not in every.get_json()["data"][0] and "key_hash" not in every.get_json()["data"][0]


def test_rotation_gives_a_new_key_with_the_same_settings_and_ends_the_old_one(admin: FlaskClient) -> None:
    tenant = _tenant(admin, tier="unlimited")
    old, old_auth = _key(admin, tenant, name="svc", rpm=50, allowed_models=["local/*"])
    rotated = admin.post(f"/v1/admin/keys/{old['id']}/rotate", json={"grace_s": 3600}, headers=ADMIN)
    assert rotated.status_code == 201
    new = rotated.get_json()
    assert new["rotated_from"] == old["id"] and new["api_key"] != old["api_key"]
    assert (new["name"], new["rpm"], new["allowed_models"]) == ("svc", 50, ["local/*"])
    assert new["replaced"]["status"] == "active" and new["replaced"]["expires_at"] is not None
    new_auth = {"Authorization": f"Bearer {new['api_key']}"}
    assert admin.get("/v1/jobs", headers=old_auth).status_code == 200, "still works during its grace"
    assert admin.get("/v1/jobs", headers=new_auth).status_code == 200
    again = admin.post(f"/v1/admin/keys/{new['id']}/rotate", headers=ADMIN)  # no grace: ends now
    assert again.status_code == 201
    assert admin.get("/v1/jobs", headers=new_auth).status_code == 401
    assert admin.post(f"/v1/admin/keys/{new['id']}/rotate", headers=ADMIN).status_code == 409


def test_a_disabled_tenant_is_refused_until_enabled(admin: FlaskClient) -> None:
    tenant = _tenant(admin, tier="unlimited")
    _, auth = _key(admin, tenant)
    assert admin.get("/v1/jobs", headers=auth).status_code == 200
    admin.patch(f"/v1/admin/tenants/{tenant['id']}", json={"disabled": True}, headers=ADMIN)
    refused = admin.get("/v1/jobs", headers=auth)
    assert refused.status_code == 403 and _error(refused)["type"] == "tenant_disabled"
    admin.patch(f"/v1/admin/tenants/{tenant['id']}", json={"disabled": False}, headers=ADMIN)
    assert admin.get("/v1/jobs", headers=auth).status_code == 200


def test_key_creation_validates_its_fields(admin: FlaskClient) -> None:
    tenant = _tenant(admin)
    for body in (
        {"tenant": tenant["name"], "rpm": 0},
        {"tenant": tenant["name"], "expires_at": "2030-01-01T00:00:00"},  # no time zone
        {"tenant": tenant["name"], "expires_in_s": 60, "expires_at": "2030-01-01T00:00:00Z"},
        {"tenant": tenant["name"], "colour": "red"},
    ):
        assert admin.post("/v1/admin/keys", json=body, headers=ADMIN).status_code == 422, body
    assert admin.post("/v1/admin/keys", json={"tenant": "nobody-x"}, headers=ADMIN).status_code == 404
    key, _ = _key(admin, tenant, expires_in_s=600)
    assert key["status"] == "active" and key["expires_at"] is not None


def test_the_admin_api_is_in_the_openapi_document(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    assert {
        "/v1/limits",
        "/v1/admin/tenants",
        "/v1/admin/keys/{key_id}/rotate",
        "/v1/admin/keys/{key_id}/revoke",
    } <= set(paths)
    assert "429" in paths["/v1/jobs"]["post"]["responses"]


def test_a_custom_tier_of_the_providers_file_sets_the_limits_and_v1_limits_shows_them(
    settings: Settings, database: Database, tmp_path: Path
) -> None:
    providers_file = tmp_path / "providers.toml"
    providers_file.write_text(
        DEFAULT_PROVIDERS_FILE.read_text() + "\n[tiers.startup]\nrpm = 2\ntpm = 50000\nweight = 2\n"
    )
    custom = create_app(
        settings.model_copy(update={"admin_token": SecretStr(ADMIN_TOKEN), "providers_file": providers_file})
    )
    custom.testing = True
    try:
        admin = custom.test_client()
        tenant = _tenant(admin, tier="startup")
        _, auth = _key(admin, tenant)
        codes = [admin.post("/v1/jobs", json={"prompt": "a"}, headers=auth).status_code for _ in range(3)]
        assert codes == [202, 202, 429]
        limits = admin.get("/v1/limits", headers=auth).get_json()
        assert limits["tier"] == "startup"
        assert limits["rpm"] == {"limit": 2, "used": 2, "counted_for": "tenant"}
        assert limits["tpm"]["limit"] == 50000 and limits["concurrency"]["limit"] is None
        _, own = _key(admin, tenant, concurrency=4)
        mine = admin.get("/v1/limits", headers=own).get_json()
        assert mine["concurrency"] == {"limit": 4, "in_flight": 0, "waiting": 0, "counted_for": "key"}
    finally:
        custom.extensions["llmq.db"].dispose()
