"""The SQL the KEDA ScaledObject (deploy/k8s/base/keda.yaml) polls, run on the real Postgres:
`due` counts exactly the jobs the sweeper would send now because no message carries them
(``jobs_to_resend``'s first kind), and `running` the jobs in processing. Jobs parked for later,
jobs on the broker and ended jobs count in neither."""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import text, update

from llmq.models.base import utcnow
from llmq.models.claim import claim_job
from llmq.models.db import Database
from llmq.models.records import NewJob
from llmq.models.recovery import jobs_to_resend
from llmq.models.submit import create_job
from llmq.models.tables import Job
from llmq.models.tenants import IssuedKey
from tests.unit.k8s_manifests import base_resources, of_kind

MODEL = "openai/k8s-scaler"  # nothing sends these jobs: the test's transaction is rolled back


def _queries() -> dict[str, str]:
    scaled = of_kind(base_resources(), "ScaledObject")["llmq-worker-llm"]
    return {
        t["name"]: t["metadata"]["query"] for t in scaled["spec"]["triggers"] if t["type"] == "postgresql"
    }


def test_the_scaler_queries_count_parked_but_due_and_running_jobs(
    database: Database, tenant: IssuedKey
) -> None:
    queries = _queries()
    assert set(queries) == {"due", "running"}
    now = utcnow()
    with database.sessionmaker() as session:
        # One snapshot for the whole test: other sessions' jobs cannot change the counts, so the
        # difference before/after is exactly the jobs made here.
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        before: dict[str, int] = {name: session.execute(text(q)).scalar_one() for name, q in queries.items()}

        def job(**values: object) -> str:
            new = NewJob(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            made, _ = create_job(session, tenant_id=tenant.tenant_id, new=new, now=now, max_attempts=5)
            if values:
                session.execute(update(Job).where(Job.id == made.id).values(**values))
            return str(made.id)

        never_sent = job(enqueued_at=None, next_attempt_at=None)  # the broker was down at submit
        parked_due = job(enqueued_at=None, next_attempt_at=now - timedelta(seconds=30))
        job(enqueued_at=None, next_attempt_at=now + timedelta(hours=1))  # parked for later
        job(enqueued_at=now, next_attempt_at=None)  # its message is on the broker
        running = job()
        assert claim_job(session, running, lease_token=secrets.token_hex(8), lease_s=60, worker="w", now=now)
        job(status="completed", enqueued_at=None, next_attempt_at=None)
        session.flush()

        after: dict[str, int] = {name: session.execute(text(q)).scalar_one() for name, q in queries.items()}
        assert after["due"] - before["due"] == 2
        assert after["running"] - before["running"] == 1
        # the same jobs the sweeper's own query finds to send (its first kind: never sent, due)
        resent = jobs_to_resend(
            session,
            now=now,
            sent_before=now - timedelta(days=3650),
            requeue_after=timedelta(0),
            limit=100_000,
        )
        mine = {never_sent, parked_due}
        assert mine <= set(resent)
        session.rollback()
