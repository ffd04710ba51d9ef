"""The pipeline through a real PgBouncer in transaction pooling mode (issue 13).

In transaction mode consecutive transactions of one client may run on different server
connections, so nothing may outlive a transaction on the server: no prepared statement (psycopg
prepares a statement after its 5th run on a connection: ``db_prepared_statements = false`` turns
that off), no session ``SET``, no ``LISTEN``, no session advisory lock (llmq takes its locks in
Redis). This runs the API, two LLM workers, the webhook worker and the sweeper with every
connection going through PgBouncer, with a server pool smaller than the clients so that
transactions really do move between server connections, and checks that every job ends, that
webhooks went out, and that PgBouncer carried the traffic.

PgBouncer comes from Debian's package (``.ci/run`` installs it when missing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from flask.testing import FlaskClient

from llmq.api.app import create_app
from llmq.config.settings import Settings
from llmq.models.db import Database
from tests.integration.conftest import SimulatorControl, unique_model, wait_for_status
from tests.integration.services import (
    WebhookReceiver,
    celery_worker_argv,
    free_port,
    settings_env,
    start_llm_worker,
    start_process,
    stop_process,
    wait_for,
)

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
JOBS = 120


@pytest.fixture(scope="module")
def pgbouncer(settings: Settings, database: Database) -> Iterator[str]:
    """A PgBouncer in front of the test database, transaction pooling, 4 server connections for
    every client the test opens. Returns its SQLAlchemy URL."""
    if not os.path.exists(PGBOUNCER):
        pytest.fail(
            "pgbouncer is not installed: .ci/run installs Debian's package (apt-get install pgbouncer)"
        )
    target = psycopg.conninfo.conninfo_to_dict(
        settings.database_url.replace("postgresql+psycopg", "postgresql")
    )
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="llmq-pgbouncer-"))
    server = " ".join(
        f"{key}={target.get(key, default)}"
        for key, default in (("host", "127.0.0.1"), ("port", 5432), ("dbname", None), ("user", "postgres"))
    )
    (workdir / "pgbouncer.ini").write_text(
        f"""[databases]
llmq = {server}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = 4
max_client_conn = 500
admin_users = postgres
ignore_startup_parameters = extra_float_digits,options
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
"""
    )
    # PgBouncer will not run as root: it switches to the postgres user (-u), who must read its files.
    shutil.chown(workdir, "postgres")
    os.chmod(workdir, 0o755)
    proc = subprocess.Popen(
        [PGBOUNCER, "-u", "postgres", str(workdir / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/llmq"

    def answers() -> bool:
        try:
            with psycopg.connect(f"host=127.0.0.1 port={port} dbname=llmq user=postgres", connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    try:
        wait_for(answers, timeout=30, what="pgbouncer")
        yield url
    finally:
        stop_process(proc)  # type: ignore[arg-type]
        shutil.rmtree(workdir, ignore_errors=True)


def _admin_stats(url: str) -> dict[str, int]:
    """PgBouncer's ``SHOW STATS`` for the llmq database (its admin console, database pgbouncer)."""
    port = url.rsplit(":", 1)[1].split("/", 1)[0]
    with psycopg.connect(
        f"host=127.0.0.1 port={port} dbname=pgbouncer user=postgres", autocommit=True
    ) as conn:
        cursor = conn.execute("SHOW STATS")
        names = [c.name for c in cursor.description or []]
        for row in cursor.fetchall():
            stats = dict(zip(names, row, strict=True))
            if stats["database"] == "llmq":
                return {k: int(v) for k, v in stats.items() if k != "database"}
    raise AssertionError("pgbouncer has no stats for the llmq database")


def test_the_pipeline_runs_through_pgbouncer_in_transaction_mode(
    settings: Settings,
    pgbouncer: str,
    sim: SimulatorControl,
    webhook_receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    # Its own broker database, so the session's worker (connected to Postgres directly) takes
    # none of these jobs: every claim and completion here goes through PgBouncer.
    broker = settings.broker_url.rsplit("/", 1)[0] + "/14"
    redis.Redis.from_url(broker).flushdb()
    through = settings.model_copy(
        update={"database_url": pgbouncer, "redis_url": broker, "db_prepared_statements": False}
    )
    env = {"LLMQ_DB_PREPARED_STATEMENTS": "false"}
    workers = [
        start_llm_worker(through, f"pgb-{n}-{uuid.uuid4().hex[:4]}@127.0.0.1", tmp_path / f"w{n}.log", env)
        for n in range(2)
    ]
    hooks_and_sweeper = start_process(
        celery_worker_argv(
            f"pgb-hooks-{uuid.uuid4().hex[:4]}@127.0.0.1", concurrency=4, beat_schedule=tmp_path / "beat"
        ),
        {**settings_env(through), **env},
        tmp_path / "hooks.log",
    )
    app = create_app(through)
    app.testing = True
    client: FlaskClient = app.test_client()
    try:
        from llmq.models.base import utcnow
        from llmq.models.tenants import create_key

        with app.extensions["llmq.db"].transaction() as session:
            tenant = create_key(
                session, tenant_name=f"pgb-{uuid.uuid4().hex[:6]}", now=utcnow(), tier="unlimited"
            )
        auth = {"Authorization": f"Bearer {tenant.api_key}"}
        bare = unique_model("pgb")
        # Some calls fail first (retried with backoff): more statements, more transactions.
        sim.script(bare, [{"fault": "500"}] * 3)  # fewer than the breaker's 5 in a row
        before = _admin_stats(pgbouncer)
        ids = []
        for n in range(JOBS):
            body = {"prompt": f"through pgbouncer {n}", "model": f"local/{bare}", "max_tokens": 8}
            if n % 4 == 0:
                body["webhook_url"] = webhook_receiver.url(f"/pgb/{bare}")
            response = client.post("/v1/jobs", json=body, headers=auth)
            assert response.status_code == 202, response.get_json()
            ids.append(response.get_json()["id"])
        cancelled = client.post(f"/v1/jobs/{ids[-1]}/cancel", headers=auth)
        assert cancelled.status_code in (200, 409)
        for job_id in ids:
            job = wait_for_status(client, auth, job_id, {"completed", "cancelled", "failed"}, timeout=120)
            assert job["status"] in ("completed", "cancelled"), job
        completed = [
            j
            for j in (client.get(f"/v1/jobs/{i}", headers=auth).get_json() for i in ids)
            if j["status"] == "completed"
        ]
        assert len(completed) >= JOBS - 1
        assert any(j["attempts"] > 1 for j in completed), "some jobs were retried"
        with_hook = {i for n, i in enumerate(ids) if n % 4 == 0}
        wait_for(
            lambda: {h.json()["data"]["id"] for h in webhook_receiver.for_path(f"/pgb/{bare}")} >= with_hook,
            timeout=60,
            what="every webhook",
        )
        after = _admin_stats(pgbouncer)
        # Many more transactions than server connections (4): they moved between them.
        assert after["total_xact_count"] - before["total_xact_count"] >= 3 * JOBS
    finally:
        for proc in [*workers, hooks_and_sweeper]:
            stop_process(proc)
        app.extensions["llmq.db"].dispose()
    logs = "".join(
        (tmp_path / name).read_text(errors="replace") for name in ("w0.log", "w1.log", "hooks.log")
    )
    assert "prepared statement" not in logs, "a prepared statement met another server connection"
    assert "DuplicatePreparedStatement" not in logs and "InvalidSqlStatementName" not in logs
