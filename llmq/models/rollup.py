"""The usage rollup, kept current in the transaction that ends each attempt.

Every attempt that ends (a success, a failure, a late answer discarded because the job was
cancelled meanwhile) adds to two tables:

- ``usage_rollups``: one row per tenant, UTC day, model, end user, key and *dims* (the job's
  metadata restricted to the providers file's ``[usage] metadata_keys``, as canonical JSON);
  ``GET /v1/usage`` and ``llmq usage`` sum these rows, never the jobs;
- ``usage_totals``: one row per tenant and model since the start, the Prometheus counters.

What counts: ``calls`` are attempts that ended with a provider outcome (one per attempt row, so a
retried job counts each try); ``failures`` those that failed; tokens and ``cost_usd`` what the
provider billed (a failed attempt adds what it was billed, usually nothing). An answer from llmq's
own response cache is not a provider call and adds nothing (it costs nothing either). A model
without a price adds its calls and tokens, and 0 to the cost.

An attempt is counted only by the write that ends it (``ended_at`` still empty), so a commit
retried after an outage, or a late duplicate, never counts it twice. Rows are written with
``INSERT ... ON CONFLICT DO UPDATE`` (Postgres and SQLite), grouped by key and in key order, so
two workers adding to the same rows take their locks in the same order: no deadlock.

The metadata keys are the process's providers file's: the worker runtime and the API register
them at start with :func:`use_metadata_keys` (like ``use_completion_recorder``), so the
transitions need no extra parameter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from llmq.models.records import CallFailure, CallResult, ClaimedJob
from llmq.models.tables import UsageRollup, UsageTotal

ROLLUPS: Table = UsageRollup.__table__  # type: ignore[assignment]
TOTALS: Table = UsageTotal.__table__  # type: ignore[assignment]
ROLLUP_KEY = ("tenant_id", "day", "model", "end_user", "api_key_id", "dims")
TOTAL_KEY = ("tenant_id", "model")
COUNTERS = (
    "calls",
    "failures",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "cost_usd",
)
_DIMS_MAX = 1024  # the dims column's size
_VALUE_MAX = 64  # a rolled-up metadata value is cut to this many characters

_metadata_keys: tuple[str, ...] = ()


def use_metadata_keys(keys: Iterable[str]) -> None:
    """The metadata keys this process rolls up (``[usage] metadata_keys``)."""
    global _metadata_keys
    _metadata_keys = tuple(sorted(set(keys)))


def metadata_keys() -> tuple[str, ...]:
    return _metadata_keys


def dims_of(metadata: Mapping[str, str] | None, keys: Iterable[str] | None = None) -> str:
    """The canonical JSON of ``metadata`` restricted to ``keys`` (default: the registered ones),
    '' when none of them is set. Values are cut to 64 characters, and keys dropped from the end
    if the whole would not fit the column."""
    if not metadata:
        return ""
    wanted = sorted(keys if keys is not None else _metadata_keys)
    chosen = {k: str(metadata[k])[:_VALUE_MAX] for k in wanted if k in metadata}
    while chosen:
        text = json.dumps(chosen, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if len(text) <= _DIMS_MAX:
            return text
        chosen.pop(sorted(chosen)[-1])
    return ""


@dataclass(frozen=True)
class UsageRow:
    """What one ended attempt adds to the rollup."""

    tenant_id: str
    day: date
    model: str
    end_user: str
    api_key_id: str
    dims: str
    calls: int = 1
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: Decimal = Decimal(0)


def _row(claim: ClaimedJob, now: datetime, **counters: Any) -> UsageRow:
    return UsageRow(
        tenant_id=claim.tenant_id,
        day=now.date(),  # now is UTC
        model=claim.model,
        end_user=claim.user or "",
        api_key_id=claim.api_key_id or "",
        dims=dims_of(claim.metadata),
        **counters,
    )


def usage_of_result(claim: ClaimedJob, result: CallResult, now: datetime) -> UsageRow | None:
    """A successful attempt's usage; None for a cache hit (no provider call). A degraded answer
    is the template llmq wrote after the provider failed: a failure, nothing billed."""
    if result.cached:
        return None
    if result.degraded:
        return _row(claim, now, failures=1)
    return _row(
        claim,
        now,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        cached_tokens=result.cached_tokens,
        cache_write_tokens=result.cache_write_tokens,
        cost_usd=result.cost_usd or Decimal(0),
    )


def usage_of_failure(claim: ClaimedJob, failure: CallFailure, now: datetime) -> UsageRow:
    billed = failure.billed
    if billed is None:
        return _row(claim, now, failures=1)
    return _row(
        claim,
        now,
        failures=1,
        prompt_tokens=billed.prompt_tokens,
        completion_tokens=billed.completion_tokens,
        cached_tokens=billed.cached_tokens,
        cache_write_tokens=billed.cache_write_tokens,
        cost_usd=billed.cost_usd or Decimal(0),
    )


def _grouped(rows: Iterable[UsageRow], key: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows summed by ``key``, in key order (the lock order)."""
    sums: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        k = tuple(getattr(row, name) for name in key)
        into = sums.get(k)
        if into is None:
            sums[k] = {**dict(zip(key, k, strict=True)), **{c: getattr(row, c) for c in COUNTERS}}
        else:
            for c in COUNTERS:
                into[c] += getattr(row, c)
    return [sums[k] for k in sorted(sums)]


def _upsert(session: Session, table: Table, key: tuple[str, ...], values: list[dict[str, Any]]) -> None:
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(table).values(values)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c[name] for name in key],
        set_={c: table.c[c] + statement.excluded[c] for c in COUNTERS},
    )
    session.execute(statement)


def add_usage(session: Session, rows: Iterable[UsageRow | None]) -> None:
    """Add ended attempts to the rollup and the totals (rollup rows first, then totals, each in
    key order: the same lock order as the batch statement's)."""
    kept = [row for row in rows if row is not None]
    if not kept:
        return
    _upsert(session, ROLLUPS, ROLLUP_KEY, _grouped(kept, ROLLUP_KEY))
    _upsert(session, TOTALS, TOTAL_KEY, _grouped(kept, TOTAL_KEY))


def batch_rollup_sql(inputs: str, closed: str) -> str:
    """The two CTEs the batch completion (``finish._complete_from_arrays``) adds: the batch's
    closed attempts, grouped by key and in key order, upserted into the rollup and then (the
    ``rolled`` InitPlan runs first) into the totals. ``inputs`` is the CTE of the batch's
    arrays, ``closed`` the CTE of the attempts it closed (``job_id``, ``number``)."""
    source = {
        "tenant_id": "input.tenant_id",
        "day": "CAST(:day AS date)",
        "model": "input.attempt_model",
        "end_user": "input.end_user",
        "api_key_id": "input.api_key_id",
        "dims": "input.dims",
    }
    sums = {
        "calls": "count(*)",
        "failures": "0",
        "prompt_tokens": "sum(input.prompt_tokens)",
        "completion_tokens": "sum(input.completion_tokens)",
        "cached_tokens": "sum(input.cached_tokens)",
        "cache_write_tokens": "sum(input.cache_write_tokens)",
        "cost_usd": "coalesce(sum(input.attempt_cost_usd), 0)",
    }
    joined = (
        f"FROM {inputs} AS input JOIN {closed} AS closed"
        " ON closed.job_id = input.id AND closed.number = input.number WHERE NOT input.cached"
    )

    def upsert(table: str, key: tuple[str, ...], guard: str) -> str:
        columns = ", ".join((*key, *COUNTERS))
        picked = ", ".join([*(source[k] for k in key), *(sums[c] for c in COUNTERS)])
        group = ", ".join(str(i + 1) for i in range(len(key)))
        updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in COUNTERS)
        return (
            f"INSERT INTO {table} ({columns}) SELECT {picked} {joined}{guard}"
            f" GROUP BY {group} ORDER BY {group}"
            f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates} RETURNING 1"
        )

    rolled = upsert(ROLLUPS.name, ROLLUP_KEY, "")
    totalled = upsert(TOTALS.name, TOTAL_KEY, " AND (SELECT count(*) FROM rolled) >= 0")
    return f"rolled AS ({rolled}), totalled AS ({totalled})"
