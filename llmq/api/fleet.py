"""What the whole fleet shares, read at scrape time by the API's ``/metrics``, each read cheap.

Queue depth and the age of the oldest waiting message per queue are one ``LLEN`` and one
``LINDEX -1`` each (kombu LPUSHes and BRPOPs; every message carries ``llmq_sent_at``). Parked
jobs by wait reason are counted over at most ``PARKED_CAP`` rows of an index. Breakers and
rate-limit use are one Lua read per configured model. A tenant's budget use is one ledger read per
tenant with a budget (the ``tenants`` table is small). No read scans the jobs, attempts or
deliveries. The workers' own counters are on their own ports (``workers/metrics.py``); these live
here because one API scrape is the one place that sees them once, not once per worker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llmq.config.providers_file import ProvidersConfig
from llmq.models.base import utcnow
from llmq.models.db import Database
from llmq.models.stats import budgeted_tenants, parked_jobs
from llmq.tasks.app import LLM_QUEUE, WEBHOOK_QUEUE
from llmq.tasks.enqueue import oldest_waiting_sent_at
from llmq.workers.breaker import CircuitBreakers
from llmq.workers.budgets import BudgetLedger, Scope, period_of, to_units
from llmq.workers.ratelimit import RateLimiter

PARKED_CAP = 10_000
BREAKER_STATES = ("closed", "open", "half_open")
logger = structlog.get_logger(__name__)


class FleetCollector(Collector):
    def __init__(
        self,
        db: Database,
        redis: Any,
        config: ProvidersConfig,
        breakers: CircuitBreakers,
        limiter: RateLimiter,
    ) -> None:
        self.db = db
        self.redis = redis
        self.config = config
        self.breakers = breakers
        self.limiter = limiter
        self.ledger = BudgetLedger(redis)

    def describe(self) -> Iterator[Any]:
        """The families this collector yields (read without touching Redis or the database)."""
        return iter(fleet_families().values())

    def collect(self) -> Iterator[Any]:
        families = fleet_families()
        for part in (self._queues, self._parked, self._models, self._budgets):
            try:
                part(families)
            except Exception as exc:  # one unreachable store must not blank the whole scrape
                logger.warning("metrics_read_failed", part=part.__name__, error=type(exc).__name__)
        return iter(families.values())

    def _queues(self, f: dict[str, GaugeMetricFamily]) -> None:
        now = time.time()
        for queue in (LLM_QUEUE, WEBHOOK_QUEUE):
            f["depth"].add_metric([queue], int(self.redis.llen(queue)))
            sent_at = oldest_waiting_sent_at(self.redis, queue)
            f["age"].add_metric([queue], 0.0 if sent_at is None else max(0.0, now - sent_at))

    def _parked(self, f: dict[str, GaugeMetricFamily]) -> None:
        with self.db.session() as session:
            for reason, count in parked_jobs(session, cap=PARKED_CAP):
                f["parked"].add_metric([reason], count)

    def _models(self, f: dict[str, GaugeMetricFamily]) -> None:
        for model in sorted(self.config.models):
            current = self.breakers.snapshot(model)["state"]
            for name in BREAKER_STATES:
                f["breaker"].add_metric([model, name], 1.0 if current == name else 0.0)
            usage = self.limiter.usage(model)
            for limit, used in (("rpm", "rpm_used"), ("tpm", "tpm_used"), ("concurrency", "in_flight")):
                cap = usage[f"{limit}_limit"]
                if cap:
                    f["saturation"].add_metric([model, limit], usage[used] / cap)

    def _budgets(self, f: dict[str, GaugeMetricFamily]) -> None:
        with self.db.session() as session:
            tenants = budgeted_tenants(session)
        now = utcnow()
        for tenant_id, name, budget_usd, period in tenants:
            units = to_units(budget_usd or 0)
            spent, held, _ = self.ledger.balance(Scope("tenant", tenant_id, units), period_of(period, now))
            f["budget"].add_metric([name], (spent + held) / units if units else 1.0)


def fleet_families() -> dict[str, GaugeMetricFamily]:
    return {
        "depth": GaugeMetricFamily("llmq_queue_depth", "Messages waiting in a queue", labels=["queue"]),
        "age": GaugeMetricFamily(
            "llmq_queue_oldest_age_seconds", "Age of the oldest message waiting in a queue", labels=["queue"]
        ),
        "parked": GaugeMetricFamily(
            "llmq_jobs_parked",
            f"Queued jobs waiting for a reason (rate_limit, breaker, budget, retry...; at most {PARKED_CAP})",
            labels=["wait_reason"],
        ),
        "breaker": GaugeMetricFamily(
            "llmq_breaker_state", "1 for the state each model's breaker is in", labels=["model", "state"]
        ),
        "saturation": GaugeMetricFamily(
            "llmq_ratelimit_saturation_ratio",
            "Share of a model's limit in use now (rpm, tpm, concurrency), for the limits set",
            labels=["model", "limit"],
        ),
        "budget": GaugeMetricFamily(
            "llmq_budget_used_ratio",
            "Share of a tenant's budget spent or held in its current period",
            labels=["tenant"],
        ),
    }
