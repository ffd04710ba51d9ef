"""``llmq keys create|list|set|revoke|rotate`` and ``llmq tenants create|list|show|set``: the
operator's side of tenants and keys, on the host, straight against the database. The admin API
(``/v1/admin/*``) calls the same domain functions, for operators without a shell.

Every change is committed, then announced in Redis (``bump_auth_epoch``), so every API process
drops its cached keys: a revoked key answers 401 at once. A limit given as ``none`` clears the
tenant's (or key's) own value, so its tier's (or tenant's) applies again.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import click
from sqlalchemy.orm import Session

from llmq.config.settings import get_settings

_UNSET: Any = object()


class _OrNone(click.ParamType[Any]):
    """A value, or ``none`` to clear it."""

    def __init__(self, inner: Callable[[str], Any], name: str) -> None:
        self.inner = inner
        self.name = name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is _UNSET or value is None:
            return value
        if isinstance(value, str) and value.lower() == "none":
            return None
        try:
            return self.inner(value)
        except (ValueError, ArithmeticError):
            self.fail(f"{value!r} is not a valid {self.name} (or 'none')", param, ctx)


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def _money(value: str) -> Decimal:
    number = Decimal(value)
    if number < 0:
        raise ValueError(value)
    return number


def _models(value: str) -> list[str]:
    return [m.strip() for m in value.split(",") if m.strip()]


def _period(value: str) -> str:
    if value not in ("month", "week", "day"):
        raise ValueError(value)
    return value


LIMIT = _OrNone(_positive_int, "positive integer")
PERIOD = _OrNone(_period, "period (month, week, day)")
MONEY = _OrNone(_money, "amount in USD")
MODELS = _OrNone(_models, "comma-separated model list")
TEXT = _OrNone(str, "text")


def _expires(value: str) -> datetime | None:
    """``none``, seconds from now (``3600``), ``30d``/``12h``/``15m``, or an ISO 8601 time."""
    from llmq.models.base import utcnow

    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    if value[-1:] in units and value[:-1].replace(".", "", 1).isdigit():
        return utcnow() + timedelta(seconds=float(value[:-1]) * units[value[-1]])
    if value.replace(".", "", 1).isdigit():
        return utcnow() + timedelta(seconds=float(value))
    stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        raise ValueError("give a time zone")
    return stamp


EXPIRES = _OrNone(_expires, "expiry (3600, 30d, 12h, an ISO 8601 time)")


@contextmanager
def _session() -> Iterator[Session]:
    from llmq.models.db import Database
    from llmq.models.migrate import upgrade

    settings = get_settings()
    if settings.is_sqlite:
        upgrade(settings.database_url)  # the embedded default needs no separate migrate step
    database = Database(settings.database_url)
    try:
        with database.transaction() as session:
            yield session
    finally:
        database.dispose()


def _announce() -> None:
    import redis

    from llmq.api.auth import bump_auth_epoch

    client = redis.Redis.from_url(get_settings().broker_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        bump_auth_epoch(client)
    except redis.RedisError:
        click.echo("warning: Redis unreachable; API processes see the change within 10 s", err=True)
    finally:
        client.close()


def _tiers() -> set[str]:
    from llmq.config.providers_file import load_providers_file

    return set(load_providers_file(get_settings().providers_file).all_tiers())


def _default_tier() -> str:
    from llmq.config.providers_file import load_providers_file

    return load_providers_file(get_settings().providers_file).tenants.default_tier


def _given(**options: Any) -> dict[str, Any]:
    return {name: value for name, value in options.items() if value is not _UNSET}


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc).strip("'\""))


def _print_keys(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'ID':<20} {'TENANT':<20} {'NAME':<16} {'PREFIX':<14} {'STATUS':<8} EXPIRES")
    for row in rows:
        click.echo(
            f"{row['id']:<20} {row['tenant']:<20} {(row['name'] or '-'):<16} {row['prefix']:<14} "
            f"{row['status']:<8} {row['expires_at'] or '-'}"
        )


_KEY_OPTIONS = [
    click.option("--name", type=TEXT, default=_UNSET, help="A label for the key."),
    click.option("--expires", type=EXPIRES, default=_UNSET, help="3600 (s), 30d, 12h, ISO time, none."),
    click.option("--models", type=MODELS, default=_UNSET, help="Allowed models: 'openai/*,local/m'."),
    click.option("--rpm", type=LIMIT, default=_UNSET, help="Own requests/min (counted for this key)."),
    click.option("--tpm", type=LIMIT, default=_UNSET, help="Own tokens/min (counted for this key)."),
    click.option("--concurrency", type=LIMIT, default=_UNSET, help="Own calls in flight."),
    click.option("--budget", "budget_usd", type=MONEY, default=_UNSET, help="USD per budget period."),
]


def _key_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_KEY_OPTIONS):
        command = option(command)
    return command


def _key_fields(options: dict[str, Any]) -> dict[str, Any]:
    fields = _given(**options)
    if "expires" in fields:
        fields["expires_at"] = fields.pop("expires")
    if "models" in fields:
        fields["allowed_models"] = fields.pop("models")
    return fields


def register(keys: click.Group, main: click.Group) -> None:
    """Add the key commands to ``llmq keys`` and the ``llmq tenants`` group to ``llmq``."""

    @keys.command("create")
    @click.option("--tenant", required=True, help="Tenant name; created on first use.")
    @click.option("--tier", default=None, help="The tier of a new tenant ([tenants] default_tier).")
    @_key_options
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @click.option("--export", "as_export", is_flag=True, help="Print shell 'export' lines.")
    def keys_create(tenant: str, tier: str | None, as_json: bool, as_export: bool, **options: Any) -> None:
        """Create an API key for TENANT and print it (it is stored only as a hash)."""
        from llmq.models.base import utcnow
        from llmq.models.keys import TenantNotFound, find_tenant, issue_key
        from llmq.models.tenant_admin import UnknownTier, create_tenant

        try:
            with _session() as session:
                try:
                    row: Any = find_tenant(session, tenant)
                except TenantNotFound:
                    row = None
                if row is None:
                    row = create_tenant(
                        session, tenant, utcnow(), tiers=_tiers(), fields={"tier": tier or _default_tier()}
                    )
                elif tier is not None and tier != row.tier:
                    raise click.ClickException(
                        f"tenant {tenant!r} is on tier {row.tier!r}: change it with 'llmq tenants set'"
                    )
                key, plaintext = issue_key(session, row, utcnow(), fields=_key_fields(options))
                issued = {
                    "tenant": row.name,
                    "tenant_id": row.id,
                    "key_id": key.id,
                    "api_key": plaintext,
                    "webhook_secret": row.webhook_secret,
                }
        except UnknownTier as exc:
            raise _fail(exc) from None
        if as_json:
            click.echo(json.dumps(issued))
        elif as_export:
            click.echo(f"export LLMQ_API_KEY={shlex.quote(issued['api_key'])}")
            click.echo(f"export LLMQ_WEBHOOK_SECRET={shlex.quote(issued['webhook_secret'])}")
        else:
            click.echo(f"tenant:         {issued['tenant']}")
            click.echo(f"key id:         {issued['key_id']}")
            click.echo(f"api key:        {issued['api_key']}")
            click.echo(f"webhook secret: {issued['webhook_secret']}")
            click.echo("The API key is shown only now; store it somewhere safe.", err=True)

    @keys.command("list")
    @click.option("--tenant", default=None, help="Only this tenant's keys (name or id).")
    @click.option("--all", "include_inactive", is_flag=True, help="Revoked and expired keys too.")
    @click.option("--json", "as_json", is_flag=True)
    def keys_list(tenant: str | None, include_inactive: bool, as_json: bool) -> None:
        """List API keys (never the keys themselves: their id and first characters)."""
        from llmq.models.base import utcnow
        from llmq.models.keys import TenantNotFound, find_tenant, key_public, list_keys

        now = utcnow()
        try:
            with _session() as session:
                tenant_id = find_tenant(session, tenant).id if tenant else None
                rows = list_keys(session, now, tenant_id=tenant_id, include_inactive=include_inactive)
                views = [key_public(k, t, now) for k, t in rows]
        except TenantNotFound as exc:
            raise click.ClickException(f"no tenant {exc}") from None
        _print_keys(views, as_json)

    @keys.command("set")
    @click.argument("key_id")
    @_key_options
    def keys_set(key_id: str, **options: Any) -> None:
        """Change KEY_ID's name, expiry, allowed models, limits or budget."""
        from llmq.models.base import utcnow
        from llmq.models.keys import KeyNotFound, key_public, update_key
        from llmq.models.tables import Tenant

        try:
            with _session() as session:
                key = update_key(session, key_id, _key_fields(options))
                tenant = session.get(Tenant, key.tenant_id)
                assert tenant is not None
                view = key_public(key, tenant, utcnow())
        except KeyNotFound:
            raise click.ClickException(f"no key {key_id!r}") from None
        _announce()
        click.echo(json.dumps(view, indent=2))

    @keys.command("revoke")
    @click.argument("key_id")
    def keys_revoke(key_id: str) -> None:
        """Revoke KEY_ID (its id, or the key itself): 401 at once on every API process."""
        from llmq.models.base import utcnow
        from llmq.models.keys import KeyNotFound, revoke_key

        try:
            with _session() as session:
                key = revoke_key(session, key_id, utcnow())
                revoked = key.id
        except KeyNotFound:
            raise click.ClickException(f"no key {key_id!r}") from None
        _announce()
        click.echo(f"revoked {revoked}", err=True)

    @keys.command("rotate")
    @click.argument("key_id")
    @click.option(
        "--grace", type=float, default=0.0, show_default=True, help="Seconds the old key still works."
    )
    @click.option("--json", "as_json", is_flag=True)
    def keys_rotate(key_id: str, grace: float, as_json: bool) -> None:
        """Replace KEY_ID by a new key with the same settings, and print the new key."""
        from llmq.models.base import utcnow
        from llmq.models.keys import KeyNotFound, rotate_key

        try:
            with _session() as session:
                new, plaintext, old = rotate_key(session, key_id, utcnow(), grace_s=grace)
                issued = {"key_id": new.id, "api_key": plaintext, "replaced": old.id}
        except KeyNotFound as exc:
            raise click.ClickException(f"cannot rotate {exc}") from None
        _announce()
        if as_json:
            click.echo(json.dumps(issued))
        else:
            click.echo(f"key id:   {issued['key_id']}  (replaces {issued['replaced']})")
            click.echo(f"api key:  {issued['api_key']}")
            click.echo("The API key is shown only now; store it somewhere safe.", err=True)

    main.add_command(tenants)


# --- tenants ---------------------------------------------------------------------------------


@click.group()
def tenants() -> None:
    """Tenants: tiers, limits, budgets."""


_TENANT_OPTIONS = [
    click.option(
        "--tier",
        type=TEXT,
        default=_UNSET,
        help="free, pro, enterprise or a [tiers.*] of the providers file.",
    ),
    click.option("--rpm", type=LIMIT, default=_UNSET, help="Own requests/min at submit (none: the tier's)."),
    click.option("--tpm", type=LIMIT, default=_UNSET, help="Own tokens/min (none: the tier's)."),
    click.option("--concurrency", type=LIMIT, default=_UNSET, help="Own calls in flight (none: the tier's)."),
    click.option("--budget", "budget_usd", type=MONEY, default=_UNSET, help="USD per period, the tenant."),
    click.option("--user-budget", "user_budget_usd", type=MONEY, default=_UNSET, help="USD per end user."),
    click.option("--period", "budget_period", type=PERIOD, default=_UNSET),
    click.option("--webhook-url", type=TEXT, default=_UNSET, help="Where budget.threshold events go."),
]


def _tenant_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_TENANT_OPTIONS):
        command = option(command)
    return command


def _print_tenants(views: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(views, indent=2))
        return
    click.echo(f"{'ID':<16} {'NAME':<24} {'TIER':<12} {'RPM':>6} {'TPM':>9} {'CONC':>5} {'BUDGET':>9}  STATE")
    for v in views:
        budget = f"{v['budget_usd']:.2f}" if v["budget_usd"] is not None else "-"
        click.echo(
            f"{v['id']:<16} {v['name']:<24} {v['tier']:<12} {v['rpm'] or '-':>6} {v['tpm'] or '-':>9} "
            f"{v['concurrency'] or '-':>5} {budget:>9}  {'disabled' if v['disabled'] else 'active'}"
        )


@tenants.command("list")
@click.option("--json", "as_json", is_flag=True)
def tenants_list(as_json: bool) -> None:
    """List the tenants with their tier and own limits ('-': the tier's)."""
    from llmq.models.tenant_admin import list_tenants, tenant_public

    with _session() as session:
        views = [tenant_public(t) for t in list_tenants(session)]
    _print_tenants(views, as_json)


@tenants.command("show")
@click.argument("tenant")
def tenants_show(tenant: str) -> None:
    """Show TENANT (name or id) and the limits it runs under."""
    from llmq.config.providers_file import load_providers_file
    from llmq.models.keys import TenantNotFound, find_tenant
    from llmq.models.tenant_admin import tenant_public
    from llmq.models.tenants import policy_of

    config = load_providers_file(get_settings().providers_file)
    try:
        with _session() as session:
            row = find_tenant(session, tenant)
            view = tenant_public(row)
            policy = policy_of(config, row, None)
    except TenantNotFound:
        raise click.ClickException(f"no tenant {tenant!r}") from None
    view["effective"] = {"rpm": policy.rpm, "tpm": policy.tpm, "concurrency": policy.concurrency}
    click.echo(json.dumps(view, indent=2))


@tenants.command("create")
@click.argument("name")
@_tenant_options
def tenants_create(name: str, **options: Any) -> None:
    """Create tenant NAME (then 'llmq keys create --tenant NAME')."""
    from llmq.models.base import utcnow
    from llmq.models.tenant_admin import TenantExists, create_tenant, tenant_public

    fields = _given(**options)
    fields.setdefault("tier", _default_tier())
    try:
        with _session() as session:
            view = tenant_public(create_tenant(session, name, utcnow(), tiers=_tiers(), fields=fields))
    except (TenantExists, ValueError) as exc:
        raise _fail(exc) from None
    click.echo(json.dumps(view, indent=2))


@tenants.command("set")
@click.argument("tenant")
@_tenant_options
@click.option(
    "--disable/--enable", "disabled", default=None, help="Refuse (401/403) or accept its keys again."
)
def tenants_set(tenant: str, disabled: bool | None, **options: Any) -> None:
    """Change TENANT's tier, limits, budgets or webhook; disable or enable it."""
    from llmq.models.base import utcnow
    from llmq.models.keys import TenantNotFound
    from llmq.models.tenant_admin import tenant_public, update_tenant

    changes = _given(**options)
    if disabled is not None:
        changes["disabled"] = disabled
    try:
        with _session() as session:
            view = tenant_public(update_tenant(session, tenant, changes, utcnow(), tiers=_tiers()))
    except TenantNotFound:
        raise click.ClickException(f"no tenant {tenant!r}") from None
    except ValueError as exc:
        raise _fail(exc) from None
    _announce()
    click.echo(json.dumps(view, indent=2))
