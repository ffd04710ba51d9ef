"""llmq over TLS to Redis: a redis-server with only a TLS port, its certificate signed by a CA
made for the test, and ``REDIS_URL=rediss://…?ssl_ca_certs=<ca>``. A job goes end to end through
it: the API publishes on the broker over TLS, a real worker process takes the message, records the
call in the fleet's breaker (a Lua script, on the same TLS server) and completes the job.
The certificate is verified: a client without the CA is refused."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from llmq.api.app import create_app
from llmq.config.redis_url import parse_redis_url
from llmq.config.settings import Settings
from llmq.models.db import Database
from llmq.tasks.app import configure_celery
from llmq.workers.keys import BREAKER_PREFIX
from llmq.workers.redis_client import redis_client
from tests.integration.conftest import SimulatorControl, unique_model, wait_for_status
from tests.integration.redis_nodes import RedisNode, TlsFiles, make_tls_files, start_tls_server
from tests.integration.services import start_llm_worker, stop_process, wait_for


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def tls_server(tmp_path: Path, tls_files: TlsFiles) -> Iterator[RedisNode]:
    node = start_tls_server(tmp_path / "redis", tls_files)
    yield node
    node.stop()


@pytest.fixture
def tls_settings(settings: Settings, tls_server: RedisNode, tls_files: TlsFiles) -> Iterator[Settings]:
    url = f"rediss://127.0.0.1:{tls_server.port}/0?ssl_cert_reqs=required&ssl_ca_certs={tls_files.ca}"
    tls = settings.model_copy(update={"redis_url": url})
    wait_for(lambda: redis_client(tls.redis_target).ping(), timeout=20, what="the TLS server")
    yield tls
    configure_celery(settings)


def test_a_job_runs_end_to_end_over_tls(
    tls_settings: Settings,
    tls_server: RedisNode,
    database: Database,
    sim: SimulatorControl,
    auth: dict[str, str],
    logs_dir: Path,
) -> None:
    name = f"tls-{uuid.uuid4().hex[:6]}@127.0.0.1"
    worker = start_llm_worker(tls_settings, name, logs_dir / f"{name}.log")
    try:
        app = create_app(tls_settings)
        client = app.test_client()
        bare = unique_model("tls")
        body = {"prompt": "over tls", "model": f"openai/{bare}"}
        response = client.post("/v1/jobs", json=body, headers=auth)
        assert response.status_code == 202, response.get_json()
        job = wait_for_status(client, auth, response.get_json()["id"], {"completed", "failed"}, timeout=60)
        assert job["status"] == "completed", job
        assert sim.requests_for(bare) == 1
        # The worker's runtime client (limiter, breakers, cache, progress) wrote over TLS too: the
        # breaker's Lua script recorded the call.
        over_tls = redis_client(tls_settings.redis_target)
        assert over_tls.keys(f"{BREAKER_PREFIX}:openai/{bare}:*"), "the breaker's state is on the TLS server"
        assert over_tls.exists("_kombu.binding.llm"), "the broker is the TLS server"
        app.extensions["llmq.db"].dispose()
    finally:
        stop_process(worker)


def test_the_servers_certificate_is_verified(tls_server: RedisNode, tls_files: TlsFiles) -> None:
    without_ca = redis_client(parse_redis_url(f"rediss://127.0.0.1:{tls_server.port}/0"))
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        without_ca.ping()
    plain = redis_client(parse_redis_url(f"redis://127.0.0.1:{tls_server.port}/0"))
    with pytest.raises(redis.ConnectionError):
        plain.ping()  # the server speaks TLS only
