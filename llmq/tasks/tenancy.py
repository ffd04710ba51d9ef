"""The policies of the tenants whose jobs a worker runs, read from the database and kept for a
few seconds: a change made through the admin API or ``llmq tenants set`` reaches every worker
within ``POLICY_TTL_S``, and a busy worker reads each tenant's row once per that time, not once
per job."""

from __future__ import annotations

import threading
import time

from sqlalchemy.orm import Session

from llmq.config.providers_file import ProvidersConfig
from llmq.models.db import Database
from llmq.models.tenants import TenantPolicy, load_policy

POLICY_TTL_S = 5.0


class TenantPolicies:
    def __init__(self, db: Database, config: ProvidersConfig, ttl_s: float = POLICY_TTL_S) -> None:
        self._db = db
        self._config = config
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str | None], tuple[float, TenantPolicy | None]] = {}

    def get(self, tenant_id: str, key_id: str | None, session: Session | None = None) -> TenantPolicy | None:
        """The policy of ``tenant_id``'s jobs submitted with ``key_id``; None for a tenant that
        no longer exists. ``session``: read it in that session (the claim's) rather than a new
        one, so that a thread never holds two connections at once — with a pool as small as
        PgBouncer's, two threads each holding one and waiting for a second would wait forever."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get((tenant_id, key_id))
        if hit is not None and hit[0] > now:
            return hit[1]
        if session is not None:
            policy = load_policy(session, self._config, tenant_id, key_id)
        else:
            with self._db.session() as own:
                policy = load_policy(own, self._config, tenant_id, key_id)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[(tenant_id, key_id)] = (now + self._ttl_s, policy)
        return policy

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()
