"""Budgets in USD, reserved before the call and settled after it, fleet-wide through Redis.

A call may be governed by up to three budgets at once — its tenant's, its end user's (``user``)
and its API key's — each per the tenant's ``budget_period`` (a UTC calendar month, ISO week or
day: :func:`period_of`). Before the call, :meth:`BudgetLedger.reserve` holds the call's worst
case (:func:`worst_case_units`: the counted prompt tokens at the model's input price plus
``max_tokens`` at its output price) in every scope at once, all or nothing, against what is left
(budget - spent - held). After the call, :meth:`BudgetLedger.settle` gives the hold back and adds
the real cost; a call that never reached the provider is cancelled (nothing spent). So however
many workers race for the last dollars, the holds never add up past the budget, and the spend of
a period exceeds it by at most what a call cost beyond its worst case (nothing, when the prompt
estimate is not below the provider's count).

Per scope and period, three keys (the ``llmq:budget`` prefix is ``BUDGET_PREFIX`` in
``workers/keys.py``)::

    llmq:budget:<scope>:<YYYYMMDD>:acct  HASH  spent, held (sums), seeded (1 once seeded)
    llmq:budget:<scope>:<YYYYMMDD>:res   HASH  reservation id → amount held
    llmq:budget:<scope>:<YYYYMMDD>:exp   ZSET  reservation id → when it expires (µs, Redis clock)

``<scope>`` is ``tenant:<tenant id>``, ``user:<tenant id>:<user>`` or ``key:<key id>``, the same
string a :class:`~llmq.models.tables.BudgetAlert` row names. Amounts are integers of 1e-8 USD,
the 8 decimals the database keeps costs to, so Redis and Postgres add up the same figures
exactly (and Lua's doubles hold them exactly up to $90 million a period).

**Where "spent" comes from.** Redis is the hot counter; the usage rollup in Postgres is the
truth. A scope's account is created *unseeded* (a new period, or Redis lost it); the first
reservation that finds it so asks the caller to seed it (``seed``: the rollup's sum for the
period, ``models/budget_usage.py``) and :meth:`reserve` adds that sum once — a second worker
seeding at the same moment finds it seeded and adds nothing. A settle that lands on an unseeded
account adds its cost all the same, so a call settled after the account was lost and committed
to the rollup before the seed is counted twice until the period ends: a small over-count, on the
safe side.

**Expiry.** Each reservation expires after ``lifetime_s`` (the gate gives the provider timeout
plus the lease, past which the call is over one way or another); every script first drops the
expired ones, so a worker killed mid-call holds its reservation that long, never for good. A
settle that comes after its reservation expired still adds the cost, once.

Every check-and-change is one Lua script (``llmq/workers/lua/budget_*.lua``) on the Redis clock.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

import redis

from llmq.config.providers_file import ModelPrice
from llmq.workers.keys import BUDGET_PREFIX
from llmq.workers.lua import load_lua

__all__ = [
    "UNITS_PER_USD",
    "BudgetHold",
    "BudgetLedger",
    "Period",
    "Reservation",
    "Scope",
    "period_of",
    "to_units",
    "to_usd",
    "worst_case_units",
]

UNITS_PER_USD = 10**8  # amounts in Redis are 1e-8 USD, the database's 8 decimals
_US = 1_000_000
_PER_MTOK = Decimal(1_000_000)
# An account outlives its period by this much, so that late settles still find it, then vanishes.
_ACCOUNT_GRACE = timedelta(days=2)
_MAX_UNITS = 2**53  # Lua's doubles count integers exactly up to here

_RESERVE = load_lua("budget_prologue", "budget_reserve")
_SETTLE = load_lua("budget_prologue", "budget_settle")
_SEED = load_lua("budget_prologue", "budget_seed")
_BALANCE = load_lua("budget_prologue", "budget_balance")

PERIODS = ("month", "week", "day")


# --- money and periods ---------------------------------------------------------------------------


def to_units(usd: Decimal | float | int) -> int:
    """US dollars as integer units of 1e-8 USD (half up, as the database rounds costs)."""
    units = (Decimal(str(usd)) * UNITS_PER_USD).to_integral_value(rounding=ROUND_HALF_UP)
    return max(0, min(int(units), _MAX_UNITS))


def to_usd(units: int) -> Decimal:
    return Decimal(units) / UNITS_PER_USD


def worst_case_units(price: ModelPrice | None, input_tokens: int, max_tokens: int) -> int:
    """The most a call may cost: ``input_tokens`` at the dearest input price (an Anthropic cache
    write costs more than plain input) plus ``max_tokens`` at the output price, rounded up to a
    unit. A model without a price costs 0 (as LiteLLM counts it): it cannot overspend a budget,
    but a spent budget still refuses it."""
    if price is None:
        return 0
    input_price = max(price.input_usd_per_mtok, price.cache_write, price.cached_input)
    usd = (
        Decimal(max(0, input_tokens)) * input_price + Decimal(max(0, max_tokens)) * price.output_usd_per_mtok
    ) / _PER_MTOK
    return min(int((usd * UNITS_PER_USD).to_integral_value(rounding=ROUND_CEILING)), _MAX_UNITS)


@dataclass(frozen=True)
class Period:
    """One budget period, ``[start, end)`` in UTC."""

    kind: str  # month | week | day
    start: datetime
    end: datetime

    @property
    def tag(self) -> str:
        return self.start.strftime("%Y%m%d")


def period_of(kind: str, now: datetime) -> Period:
    """The UTC calendar period of ``kind`` holding ``now``: a month from the 1st, an ISO week
    from Monday, a day from midnight. An unknown kind counts as a month."""
    now = now.astimezone(UTC)
    day = datetime(now.year, now.month, now.day, tzinfo=UTC)
    if kind == "day":
        return Period(kind, day, day + timedelta(days=1))
    if kind == "week":
        start = day - timedelta(days=day.weekday())
        return Period(kind, start, start + timedelta(days=7))
    start = day.replace(day=1)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return Period("month", start, end)


# --- what the ledger takes and gives ---------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """One budget a call counts against."""

    kind: str  # tenant | user | key
    tenant_id: str
    budget_units: int
    user: str | None = None
    key_id: str | None = None

    @property
    def name(self) -> str:
        if self.kind == "user":
            return f"user:{self.tenant_id}:{self.user}"
        if self.kind == "key":
            return f"key:{self.key_id}"
        return f"tenant:{self.tenant_id}"


@dataclass(frozen=True)
class BudgetHold:
    """A reservation held in every scope of one call, for :meth:`BudgetLedger.settle`."""

    reservation: str
    scopes: tuple[Scope, ...]
    period: Period
    amount: int

    def to_json(self) -> str:
        """The hold as JSON, for a process that settles it later (a provider batch's poller)."""
        return json.dumps(
            {
                "reservation": self.reservation,
                "amount": self.amount,
                "period": [self.period.kind, self.period.start.isoformat(), self.period.end.isoformat()],
                "scopes": [[s.kind, s.tenant_id, s.budget_units, s.user, s.key_id] for s in self.scopes],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> BudgetHold:
        data = json.loads(raw)
        kind, start, end = data["period"]
        return cls(
            reservation=data["reservation"],
            scopes=tuple(Scope(*scope) for scope in data["scopes"]),
            period=Period(kind, datetime.fromisoformat(start), datetime.fromisoformat(end)),
            amount=int(data["amount"]),
        )


@dataclass(frozen=True)
class Reservation:
    """The answer of :meth:`BudgetLedger.reserve`: the hold, or the scope that had no room
    (with what it had spent and held, in units)."""

    hold: BudgetHold | None
    refused: Scope | None = None
    spent: int = 0
    held: int = 0
    needed: int = 0


@dataclass(frozen=True)
class Spend:
    """What one settle did to one scope's spend, in units: ``before`` → ``after``."""

    scope: Scope
    before: int
    after: int


Seeder = Callable[[Sequence[Scope], Period], Sequence[int]]


class BudgetLedger:
    """Every budget's spend and holds, in ``client``'s Redis."""

    def __init__(self, client: redis.Redis, *, prefix: str = BUDGET_PREFIX) -> None:
        self._prefix = prefix
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._seed = client.register_script(_SEED)
        self._balance = client.register_script(_BALANCE)

    def _keys(self, scopes: Sequence[Scope], period: Period) -> list[str]:
        keys = []
        for scope in scopes:
            base = f"{self._prefix}:{scope.name}:{period.tag}"
            keys += [f"{base}:acct", f"{base}:res", f"{base}:exp"]
        return keys

    @staticmethod
    def _account_ttl_ms(period: Period, now: datetime) -> int:
        return max(1000, math.ceil((period.end + _ACCOUNT_GRACE - now).total_seconds() * 1000))

    def reserve(
        self,
        scopes: Sequence[Scope],
        period: Period,
        amount: int,
        *,
        lifetime_s: float,
        seed: Seeder,
        now: datetime,
        reservation: str | None = None,
    ) -> Reservation:
        """Hold ``amount`` in every scope, or in none: the first scope without room for it is
        refused. Unseeded scopes are seeded first with ``seed(scopes, period)`` (what the database
        says each spent in the period), then the reservation is asked again. A ``reservation``
        id already held is not held twice: its expiry is renewed (a random id when not given)."""
        keys = self._keys(scopes, period)
        member = reservation or uuid.uuid4().hex
        ttl_ms = self._account_ttl_ms(period, now)
        args: list[int | str] = [amount, member, int(lifetime_s * _US), ttl_ms]
        args += [s.budget_units for s in scopes]
        for _ in range(3):
            result = [int(v) for v in self._reserve(keys=keys, args=args)]
            if result[0] == 1:
                return Reservation(BudgetHold(member, tuple(scopes), period, amount), needed=amount)
            if result[0] == 0:
                scope = scopes[result[1] - 1]
                return Reservation(None, scope, spent=result[2], held=result[3], needed=amount)
            unseeded = [scopes[i - 1] for i in result[1:]]
            spent = seed(unseeded, period)
            self._seed(keys=self._keys(unseeded, period), args=[ttl_ms, *(int(s) for s in spent)])
        raise redis.RedisError("budget accounts would not stay seeded")  # evicted as fast as seeded

    def settle(self, hold: BudgetHold, cost_units: int, *, now: datetime) -> list[Spend]:
        """End ``hold`` with the call's real cost (0 for a call the provider did not bill).
        Returns each scope's spend before and after, for the soft thresholds."""
        values = self._settle(
            keys=self._keys(hold.scopes, hold.period),
            args=[hold.reservation, max(0, cost_units), self._account_ttl_ms(hold.period, now)],
        )
        flat = [int(v) for v in values]
        return [
            Spend(scope, flat[2 * i], flat[2 * i + 1])
            for i, scope in enumerate(hold.scopes)
            if 2 * i + 1 < len(flat)
        ]

    def cancel(self, hold: BudgetHold) -> None:
        """Give ``hold`` back: the call never reached the provider."""
        self._settle(keys=self._keys(hold.scopes, hold.period), args=[hold.reservation, -1, 1000])

    def balance(self, scope: Scope, period: Period) -> tuple[int, int, bool]:
        """``(spent, held, seeded)`` of one scope in ``period`` now, in units."""
        spent, held, seeded = (int(v) for v in self._balance(keys=self._keys([scope], period), args=[]))
        return spent, held, bool(seeded)
