"""Usage per group, answered from the rollup: ``GET /v1/usage`` and ``llmq usage`` both call
:func:`usage_report`.

One ``SUM ... GROUP BY`` over the tenant's ``usage_rollups`` rows of the days asked (the leading
columns of the rollup's unique key, ``tenant_id, day``, serve the range), never a scan of the
jobs: its cost grows with the days, models, users, keys and metadata values, not the calls.
Grouping by ``metadata.<key>`` groups by ``dims`` in SQL and then by the key's value in Python
(``dims`` is canonical JSON), which keeps the query the same on Postgres and SQLite.

Group names: ``day``, ``model``, ``user`` (the job's ``user``), ``key`` (the API key's id the job
was submitted with), ``metadata.<key>`` for a key of ``[usage] metadata_keys``. A job without a
user, key or metadata value is grouped under ``null``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from llmq.models.rollup import COUNTERS
from llmq.models.tables import Tenant, UsageRollup, UsageTotal

GROUP_COLUMNS = {
    "day": UsageRollup.day,
    "model": UsageRollup.model,
    "user": UsageRollup.end_user,
    "key": UsageRollup.api_key_id,
}
METADATA_PREFIX = "metadata."


class UnknownGroup(ValueError):
    """A ``group_by`` name that is not a group; the message says which ones are."""


def parse_group_by(text: str | None, metadata_keys: tuple[str, ...] | list[str]) -> list[str]:
    """``"day,model"`` → ``["day", "model"]``, checked (duplicates dropped, order kept)."""
    groups: list[str] = []
    for raw in (text or "").split(","):
        name = raw.strip()
        if not name or name in groups:
            continue
        if name.startswith(METADATA_PREFIX):
            if name[len(METADATA_PREFIX) :] not in metadata_keys:
                rolled = (
                    ", ".join(metadata_keys) if metadata_keys else "none ([usage] metadata_keys is empty)"
                )
                raise UnknownGroup(
                    f"cannot group by {name!r}: the usage rollup keeps only these metadata keys: {rolled}"
                )
        elif name not in GROUP_COLUMNS:
            raise UnknownGroup(
                f"cannot group by {name!r}: group by any of day, model, user, key, metadata.<key>"
            )
        groups.append(name)
    return groups


@dataclass
class UsageReport:
    start: date
    end: date
    group_by: list[str]
    data: list[dict[str, Any]] = field(default_factory=list)
    total: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """The body of ``GET /v1/usage`` (costs as numbers)."""
        return {
            "object": "list",
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "group_by": self.group_by,
            "data": [_public_row(row) for row in self.data],
            "total": _public_row(self.total),
        }


def _public_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: float(v) if isinstance(v, Decimal) else v for k, v in row.items()}


def _zero() -> dict[str, Any]:
    return {c: Decimal(0) if c == "cost_usd" else 0 for c in COUNTERS}


def _group_value(name: str, value: Any) -> Any:
    if name == "day":
        return value.isoformat() if isinstance(value, date) else str(value)
    return value or None  # '' stands for none in the rollup's key


def usage_report(
    session: Session, tenant_id: str, start: date, end: date, group_by: list[str]
) -> UsageReport:
    """Calls, failures, tokens and cost of ``tenant_id`` from ``start`` to ``end`` (UTC days,
    both included), per group of ``group_by`` (checked by :func:`parse_group_by`)."""
    sql_groups = [name for name in group_by if name in GROUP_COLUMNS]
    by_metadata = [name for name in group_by if name.startswith(METADATA_PREFIX)]
    columns = [GROUP_COLUMNS[name] for name in sql_groups]
    if by_metadata:
        columns.append(UsageRollup.dims)
    sums = [func.sum(getattr(UsageRollup, c)) for c in COUNTERS]
    query = (
        select(*columns, *sums)
        .where(UsageRollup.tenant_id == tenant_id, UsageRollup.day >= start, UsageRollup.day <= end)
        .group_by(*columns)
    )
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    total = _zero()
    for row in session.execute(query):
        values = list(row)
        keys = {name: _group_value(name, values[i]) for i, name in enumerate(sql_groups)}
        if by_metadata:
            dims = json.loads(values[len(sql_groups)] or "{}")
            for name in by_metadata:
                keys[name] = dims.get(name[len(METADATA_PREFIX) :])
        counters = values[len(columns) :]
        ordered = tuple(keys[name] for name in group_by)
        into = groups.setdefault(ordered, {**{name: keys[name] for name in group_by}, **_zero()})
        for c, value in zip(COUNTERS, counters, strict=True):
            amount = Decimal(value or 0) if c == "cost_usd" else int(value or 0)
            into[c] += amount
            total[c] += amount
    data = [groups[k] for k in sorted(groups, key=lambda k: tuple((v is not None, v or "") for v in k))]
    return UsageReport(start=start, end=end, group_by=group_by, data=data, total=total)


def tenant_id_named(session: Session, name: str) -> str | None:
    return session.scalar(select(Tenant.id).where(Tenant.name == name))


def usage_totals(session: Session) -> list[tuple[str, str, dict[str, Any]]]:
    """``(tenant name, model, counters)`` for every row of ``usage_totals``: the Prometheus
    counters, one small query (a row per tenant and model)."""
    query = select(Tenant.name, UsageTotal.model, *(getattr(UsageTotal, c) for c in COUNTERS)).join(
        Tenant, Tenant.id == UsageTotal.tenant_id
    )
    return [(row[0], row[1], dict(zip(COUNTERS, row[2:], strict=True))) for row in session.execute(query)]
