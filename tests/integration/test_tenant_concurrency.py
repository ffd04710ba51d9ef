"""A tenant's calls in flight are capped fleet-wide: two real worker processes share the cap
through Redis, the provider (the simulator, over HTTP through the SDK) never sees more of that
tenant's calls at once, every job still completes, every slot comes back, and another tenant is
not held to it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from flask.testing import FlaskClient

from llmq.config.settings import Settings
from llmq.models.base import utcnow
from llmq.models.db import Database
from llmq.models.tenant_admin import update_tenant
from llmq.models.tenants import IssuedKey, create_key
from llmq.workers.tenantlimit import TenantLimiter
from tests.integration.conftest import SimulatorControl, wait_for_status
from tests.integration.services import start_llm_worker, stop_process

CAP = 3


@pytest.fixture(scope="module")
def second_worker(settings: Settings, worker: str, logs_dir: Path) -> Iterator[str]:
    name = f"tenant-cap-{uuid.uuid4().hex[:6]}@127.0.0.1"
    proc = start_llm_worker(settings, name, logs_dir / "tenant-cap-worker.log")
    try:
        yield name
    finally:
        stop_process(proc)


def _tenant(database: Database, **limits: Any) -> IssuedKey:
    with database.transaction() as session:
        issued = create_key(
            session, tenant_name=f"cap-{uuid.uuid4().hex[:8]}", now=utcnow(), tier="unlimited"
        )
        if limits:
            update_tenant(session, issued.tenant_id, limits, utcnow(), tiers={"unlimited"})
    return issued


def _submit(client: FlaskClient, issued: IssuedKey, model: str, n: int) -> list[str]:
    auth = {"Authorization": f"Bearer {issued.api_key}"}
    ids = []
    for i in range(n):
        response = client.post(
            "/v1/jobs", json={"prompt": f"job {i}", "model": f"local/{model}"}, headers=auth
        )
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
    return ids


def test_a_tenants_concurrency_holds_across_two_workers_and_spares_other_tenants(
    client: FlaskClient,
    database: Database,
    sim: SimulatorControl,
    settings: Settings,
    second_worker: str,
) -> None:
    capped_model, free_model = f"tcap-{uuid.uuid4().hex[:8]}", f"tfree-{uuid.uuid4().hex[:8]}"
    sim.script(capped_model, [], default={"fault": "ok", "latency": 0.4})
    sim.script(free_model, [], default={"fault": "ok", "latency": 1.5})
    httpx.post(f"{sim.url}/_sim/stats/reset")
    capped = _tenant(database, concurrency=CAP)
    other = _tenant(database)

    capped_ids = _submit(client, capped, capped_model, 24)
    other_ids = _submit(client, other, free_model, 8)
    for issued, ids in ((capped, capped_ids), (other, other_ids)):
        auth = {"Authorization": f"Bearer {issued.api_key}"}
        for job_id in ids:
            job = wait_for_status(client, auth, job_id, {"completed", "failed", "cancelled"}, timeout=120)
            assert job["status"] == "completed", job

    peaks = sim.stats()["peak_in_flight_by_model"]
    assert 1 <= peaks[capped_model] <= CAP, f"the capped tenant had {peaks[capped_model]} calls in flight"
    assert peaks[free_model] > CAP, "another tenant is not held to that tenant's cap"
    client_redis = redis.Redis.from_url(settings.broker_url)
    try:
        assert TenantLimiter(client_redis).slots_in_use(f"tenant:{capped.tenant_id}") == 0, (
            "every slot came back"
        )
    finally:
        client_redis.close()
