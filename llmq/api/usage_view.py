"""``llmq usage``: the same report as ``GET /v1/usage`` (``models/usage.py``), for an operator at
the host, as a table or as the API's JSON. Kept out of ``cli.py`` so the command stays one call."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import click

from llmq.api.usage import default_range
from llmq.config.providers_file import load_providers_file
from llmq.config.settings import Settings
from llmq.models.db import Database
from llmq.models.usage import UnknownGroup, parse_group_by, tenant_id_named, usage_report

_NUMBERS = ("calls", "failures", "prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens")


def _day(text: str | None, option: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date (YYYY-MM-DD)", param_hint=option) from None


def usage_for_cli(
    settings: Settings, tenant: str, start: str | None, end: str | None, group_by: str, as_json: bool
) -> str:
    first, last = default_range(_day(start, "--from"), _day(end, "--to"))
    if last < first:
        raise click.BadParameter("--to is before --from")
    keys = load_providers_file(settings.providers_file).usage.metadata_keys
    try:
        groups = parse_group_by(group_by, keys)
    except UnknownGroup as exc:
        raise click.BadParameter(str(exc), param_hint="--group-by") from None
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            tenant_id = tenant_id_named(session, tenant)
            if tenant_id is None:
                raise click.ClickException(f"no tenant named {tenant!r}")
            report = usage_report(session, tenant_id, first, last, groups)
    finally:
        database.dispose()
    if as_json:
        return json.dumps(report.public())
    return render_table(report.public())


def render_table(body: dict[str, Any]) -> str:
    """The report as aligned columns: the groups, the counters, the cost; a total line last."""
    groups: list[str] = body["group_by"]
    counters = [*_NUMBERS, "cost_usd"]
    header = [*groups, *counters]
    rows = [[_cell(row.get(name)) for name in header] for row in body["data"]]
    total_label = ["total", *([""] * (len(groups) - 1))] if groups else []
    rows.append(total_label + [_cell(body["total"][name]) for name in counters])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < len(groups) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([f"usage from {body['from']} to {body['to']} (UTC)", line(header), *map(line, rows)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.8f}".rstrip("0").rstrip(".") or "0"
    return str(value)
