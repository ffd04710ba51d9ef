"""Across API processes: two real ``llmq api`` servers (gunicorn) on the same Postgres and Redis,
each with the key cached from an earlier request. A key revoked through one of them (or with
``llmq keys revoke`` on the host) is refused by the other at its very next request; an expired
key from the instant it expires; a tenant's rpm is counted across both servers, and a change of
it applies on both at once."""

from __future__ import annotations

import functools
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmq.config.settings import Settings
from llmq.models.base import utcnow
from llmq.models.db import Database
from tests.integration.services import (
    VENV_BIN,
    free_port,
    settings_env,
    start_process,
    stop_process,
    wait_for,
)

ADMIN_TOKEN = "adm_" + "r" * 28
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LLMQ = str(VENV_BIN / "llmq")


def _env(settings: Settings) -> dict[str, str]:
    return {**settings_env(settings), "LLMQ_ADMIN_TOKEN": ADMIN_TOKEN}


@pytest.fixture(scope="module")
def two_apis(
    settings: Settings, database: Database, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    urls, procs = [], []
    try:
        for name in ("a", "b"):
            port = free_port()
            var = tmp_path_factory.mktemp(f"api-{name}")
            env = {
                **_env(settings),
                "LLMQ_API_PORT": str(port),
                "LLMQ_VAR_DIR": str(var),
                "LLMQ_API_WORKERS": "1",
            }
            procs.append(start_process([LLMQ, "api"], env, Path(var) / "api.log"))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            wait_for(functools.partial(_healthy, url), timeout=60, what=url)
        yield urls
    finally:
        for proc in procs:
            stop_process(proc)


def _healthy(url: str) -> bool:
    return httpx.get(f"{url}/health", timeout=2).status_code == 200


def _new_key(api: str, **fields: Any) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    tenant = httpx.post(
        f"{api}/v1/admin/tenants",
        json={"name": f"fleet-{uuid.uuid4().hex[:8]}", "tier": "unlimited"},
        headers=ADMIN,
    ).json()
    key = httpx.post(f"{api}/v1/admin/keys", json={"tenant": tenant["id"], **fields}, headers=ADMIN).json()
    return key, {"Authorization": f"Bearer {key['api_key']}"}, tenant


def _warm(urls: list[str], auth: dict[str, str]) -> None:
    for url in urls:
        assert httpx.get(f"{url}/v1/jobs", headers=auth).status_code == 200  # now cached there


def test_a_key_revoked_through_one_api_process_is_refused_by_the_other_at_once(two_apis: list[str]) -> None:
    a, b = two_apis
    key, auth, _ = _new_key(a)
    _warm(two_apis, auth)
    assert httpx.post(f"{a}/v1/admin/keys/{key['id']}/revoke", headers=ADMIN).status_code == 200
    refused = httpx.get(f"{b}/v1/jobs", headers=auth)
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "key_revoked"
    assert httpx.post(f"{a}/v1/jobs", json={"prompt": "x"}, headers=auth).status_code == 401


def test_a_key_revoked_with_the_cli_is_refused_by_every_api_process_at_once(
    two_apis: list[str], settings: Settings
) -> None:
    key, auth, _ = _new_key(two_apis[0])
    _warm(two_apis, auth)
    done = subprocess.run(
        [LLMQ, "keys", "revoke", key["id"]], env=_env(settings), capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for url in two_apis:
        assert httpx.get(f"{url}/v1/jobs", headers=auth).status_code == 401


def test_an_expired_key_is_refused_by_a_process_that_had_it_cached(two_apis: list[str]) -> None:
    a, b = two_apis
    key, auth, _ = _new_key(a, expires_in_s=2)
    _warm(two_apis, auth)
    expires_at = datetime.fromisoformat(key["expires_at"].replace("Z", "+00:00"))
    while utcnow() <= expires_at:  # let the key's expiry come (what is checked is the answer after it)
        time.sleep(0.05)
    refused = httpx.get(f"{b}/v1/jobs", headers=auth)
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "key_expired"


def test_a_tenants_rpm_is_counted_across_api_processes_and_a_change_applies_on_all(
    two_apis: list[str],
) -> None:
    a, b = two_apis
    _, auth, tenant = _new_key(a)
    _warm(two_apis, auth)
    changed = httpx.patch(f"{a}/v1/admin/tenants/{tenant['id']}", json={"rpm": 3}, headers=ADMIN)
    assert changed.status_code == 200
    codes = [
        httpx.post(f"{url}/v1/jobs", json={"prompt": "x"}, headers=auth).status_code for url in (a, b, a, b)
    ]
    assert codes == [202, 202, 202, 429], "three a minute, whichever process takes them"
