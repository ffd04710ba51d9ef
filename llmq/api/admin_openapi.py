"""The governance endpoints' part of ``/openapi.json`` (the admin API and ``/v1/limits``);
``openapi.py`` merges it in."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from llmq.api.admin_schemas import (
    IssuedKeyOut,
    KeyCreate,
    KeyList,
    KeyOut,
    KeyRotate,
    KeyUpdate,
    TenantCreate,
    TenantList,
    TenantOut,
    TenantUpdate,
)

REF = "#/components/schemas/{model}"
INPUTS: tuple[type[BaseModel], ...] = (TenantCreate, TenantUpdate, KeyCreate, KeyUpdate, KeyRotate)
OUTPUTS: tuple[type[BaseModel], ...] = (TenantOut, TenantList, KeyOut, KeyList, IssuedKeyOut)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(model)}}}


def admin_paths(errors: Any) -> dict[str, Any]:
    """The ``paths`` of the admin API; ``errors(*codes)`` gives the error responses."""
    admin: list[dict[str, list[str]]] = [{"admin": []}]
    ref = {"name": "ref", "in": "path", "required": True, "schema": {"type": "string"}}
    key_id = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/v1/limits": {
            "get": {
                "summary": "The calling key's tier, limits and their use now",
                "security": [{"bearer": []}],
                "responses": {"200": {"description": "the limits"}, **errors(401, 403, 503)},
            }
        },
        "/v1/admin/tenants": {
            "get": {
                "summary": "List the tenants",
                "security": admin,
                "responses": {"200": _json(TenantList, "the tenants"), **errors(401, 403)},
            },
            "post": {
                "summary": "Create a tenant (its webhook secret is in this answer only)",
                "security": admin,
                "requestBody": _body(TenantCreate),
                "responses": {"201": _json(TenantOut, "the tenant"), **errors(401, 403, 409, 422)},
            },
        },
        "/v1/admin/tenants/{ref}": {
            "get": {
                "summary": "Read a tenant (by id or name)",
                "security": admin,
                "parameters": [ref],
                "responses": {"200": _json(TenantOut, "the tenant"), **errors(401, 403, 404)},
            },
            "patch": {
                "summary": "Change a tenant's tier, limits, budgets, webhook; disable or enable it",
                "security": admin,
                "parameters": [ref],
                "requestBody": _body(TenantUpdate),
                "responses": {"200": _json(TenantOut, "the tenant"), **errors(401, 403, 404, 422)},
            },
        },
        "/v1/admin/keys": {
            "get": {
                "summary": "List API keys (active only unless include_inactive)",
                "security": admin,
                "parameters": [
                    {"name": "tenant", "in": "query", "schema": {"type": "string"}},
                    {"name": "include_inactive", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {"200": _json(KeyList, "the keys"), **errors(401, 403, 404, 422)},
            },
            "post": {
                "summary": "Issue an API key (shown in this answer only)",
                "security": admin,
                "requestBody": _body(KeyCreate),
                "responses": {"201": _json(IssuedKeyOut, "the new key"), **errors(401, 403, 404, 422)},
            },
        },
        "/v1/admin/keys/{key_id}": {
            "get": {
                "summary": "Read an API key",
                "security": admin,
                "parameters": [key_id],
                "responses": {"200": _json(KeyOut, "the key"), **errors(401, 403, 404)},
            },
            "patch": {
                "summary": "Change a key's name, expiry, allowed models, limits or budget",
                "security": admin,
                "parameters": [key_id],
                "requestBody": _body(KeyUpdate),
                "responses": {"200": _json(KeyOut, "the key"), **errors(401, 403, 404, 422)},
            },
        },
        "/v1/admin/keys/{key_id}/revoke": {
            "post": {
                "summary": "Revoke a key: 401 at once on every API process",
                "security": admin,
                "parameters": [key_id],
                "responses": {"200": _json(KeyOut, "the revoked key"), **errors(401, 403, 404)},
            }
        },
        "/v1/admin/keys/{key_id}/rotate": {
            "post": {
                "summary": "A new key with the old one's settings; the old one ends now or after grace_s",
                "security": admin,
                "parameters": [key_id],
                "requestBody": _body(KeyRotate, required=False),
                "responses": {"201": _json(IssuedKeyOut, "the new key"), **errors(401, 403, 404, 409, 422)},
            }
        },
    }
