"""Budgets on the bundled Redis: the period arithmetic, the worst case of a call, the ledger's
Lua scripts (reserve all or nothing, settle, cancel, expiry, seeding once) and the budget stage
of the gate (a job over budget is refused or parked until the next period; no budget, no Redis)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis

from llmq.config.providers_file import ModelConfig, ModelPrice, ProvidersConfig
from llmq.models.records import ClaimedJob
from llmq.models.tenants import TenantPolicy
from llmq.tasks.gate import CallEnd, Go, Park, Refuse, after_call, gate
from llmq.workers.budgets import (
    BudgetHold,
    BudgetLedger,
    Period,
    Scope,
    period_of,
    to_units,
    to_usd,
    worst_case_units,
)
from llmq.workers.tokens import estimate_input_tokens
from tests.sync import done
from tests.unit.gate_runtime import gate_runtime

NOW = datetime(2026, 3, 18, 15, 30, tzinfo=UTC)
PERIOD = period_of("month", NOW)
TENANT = Scope("tenant", "ten_1", to_units(1))  # $1
USER = Scope("user", "ten_1", to_units(Decimal("0.10")), user="alice")  # $0.10


def _no_seed(scopes: Sequence[Scope], period: Period) -> list[int]:
    return [0 for _ in scopes]


def _reserve(ledger: BudgetLedger, scopes: Sequence[Scope], amount: int, **kw: Any) -> Any:
    kw.setdefault("lifetime_s", 60.0)
    kw.setdefault("seed", _no_seed)
    return ledger.reserve(scopes, PERIOD, amount, now=NOW, **kw)


# --- periods and money -----------------------------------------------------------------------------


def test_a_month_starts_on_the_first_and_december_ends_in_january() -> None:
    assert period_of("month", NOW) == Period(
        "month", datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    )
    december = period_of("month", datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert (december.start, december.end) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


def test_a_week_starts_on_monday_and_a_day_at_midnight_utc() -> None:
    sunday = datetime(2026, 3, 22, 23, 0, tzinfo=UTC)
    week = period_of("week", sunday)
    assert (week.start, week.end) == (datetime(2026, 3, 16, tzinfo=UTC), datetime(2026, 3, 23, tzinfo=UTC))
    day = period_of("day", NOW)
    assert (day.start, day.end) == (datetime(2026, 3, 18, tzinfo=UTC), datetime(2026, 3, 19, tzinfo=UTC))
    assert day.tag == "20260318"


def test_a_period_is_the_utc_one_whatever_the_time_zone_of_now() -> None:
    from datetime import timedelta, timezone

    # 01:00 on April 1st at UTC+2 is still March 31st in UTC.
    local = datetime(2026, 4, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert period_of("month", local).start == datetime(2026, 3, 1, tzinfo=UTC)


def test_worst_case_prices_the_counted_prompt_and_max_tokens_rounded_up() -> None:
    price = ModelPrice(input_usd_per_mtok=Decimal("0.15"), output_usd_per_mtok=Decimal("0.60"))
    # 1 input token = $0.00000015 = 15 units; 1 output token = 60 units.
    assert worst_case_units(price, 100, 10) == 100 * 15 + 10 * 60
    odd = ModelPrice(input_usd_per_mtok=Decimal("0.001"), output_usd_per_mtok=Decimal(0))
    assert worst_case_units(odd, 1, 0) == 1  # $1e-9 rounds up to one unit, never down to 0
    assert worst_case_units(None, 100, 10) == 0  # no price: counted as $0


def test_units_are_the_databases_eight_decimals() -> None:
    assert to_units(Decimal("0.00000001")) == 1
    assert to_units(Decimal("12.34567891")) == 1_234_567_891
    assert to_usd(1_234_567_891) == Decimal("12.34567891")


# --- the ledger ------------------------------------------------------------------------------------


def test_reservations_fit_until_the_budget_then_the_next_is_refused(rdb: redis.Redis) -> None:
    ledger = BudgetLedger(rdb)
    quarter = TENANT.budget_units // 4
    holds = [_reserve(ledger, [TENANT], quarter).hold for _ in range(4)]
    assert all(hold is not None for hold in holds)
    refused = _reserve(ledger, [TENANT], 1)
    assert refused.hold is None and refused.refused == TENANT
    assert (refused.spent, refused.held) == (0, TENANT.budget_units)


def test_a_reservation_is_all_or_nothing_across_scopes(rdb: redis.Redis) -> None:
    ledger = BudgetLedger(rdb)
    too_much_for_the_user = USER.budget_units + 1
    answer = _reserve(ledger, [TENANT, USER], too_much_for_the_user)
    assert answer.hold is None and answer.refused == USER
    assert ledger.balance(TENANT, PERIOD) == (0, 0, True)  # the tenant's scope took nothing
    assert _reserve(ledger, [TENANT, USER], USER.budget_units).hold is not None
    assert ledger.balance(TENANT, PERIOD)[1] == USER.budget_units


def test_settle_replaces_the_hold_by_the_real_cost(rdb: redis.Redis) -> None:
    ledger = BudgetLedger(rdb)
    hold = _reserve(ledger, [TENANT, USER], 5000).hold
    assert hold is not None
    spends = ledger.settle(hold, 1200, now=NOW)
    assert [(s.scope, s.before, s.after) for s in spends] == [(TENANT, 0, 1200), (USER, 0, 1200)]
    assert ledger.balance(TENANT, PERIOD) == (1200, 0, True)
    assert ledger.balance(USER, PERIOD) == (1200, 0, True)


def test_cancel_gives_the_hold_back_and_spends_nothing(rdb: redis.Redis) -> None:
    ledger = BudgetLedger(rdb)
    hold = _reserve(ledger, [TENANT], TENANT.budget_units).hold
    assert hold is not None
    ledger.cancel(hold)
    assert ledger.balance(TENANT, PERIOD) == (0, 0, True)
    assert _reserve(ledger, [TENANT], TENANT.budget_units).hold is not None


def test_an_expired_reservation_is_dropped_and_a_late_settle_counts_once(rdb: redis.Redis) -> None:
    ledger = BudgetLedger(rdb)
    dead = _reserve(ledger, [TENANT], TENANT.budget_units, lifetime_s=0).hold  # its worker died
    assert dead is not None
    assert ledger.balance(TENANT, PERIOD) == (0, 0, True)  # dropped by the next script
    assert _reserve(ledger, [TENANT], TENANT.budget_units // 2).hold is not None
    ledger.settle(dead, 700, now=NOW)  # the call did end after all: its cost counts, once
    assert ledger.balance(TENANT, PERIOD) == (700, TENANT.budget_units // 2, True)


def test_a_reservation_asked_again_under_its_id_renews_it_and_holds_nothing_twice(rdb: redis.Redis) -> None:
    """A provider batch's line: its sender resumed, or its poll renewing it, asks again."""
    ledger = BudgetLedger(rdb)
    amount = TENANT.budget_units * 3 // 4
    first = _reserve(ledger, [TENANT, USER], amount // 10, reservation="pb_1:job_1").hold
    again = _reserve(ledger, [TENANT, USER], amount // 10, reservation="pb_1:job_1", lifetime_s=3600).hold
    assert first is not None and again == first
    assert ledger.balance(TENANT, PERIOD) == (0, amount // 10, True)
    expiry = rdb.zscore(f"llmq:budget:{TENANT.name}:{PERIOD.tag}:exp", "pb_1:job_1")
    assert expiry is not None and expiry > done(rdb.time())[0] * 1_000_000 + 3000 * 1_000_000  # renewed
    ledger.settle(first, 900, now=NOW)
    assert ledger.balance(TENANT, PERIOD) == (900, 0, True)


def test_a_hold_survives_its_json_for_the_process_that_settles_it() -> None:
    hold = BudgetHold("pb_1:job_1", (TENANT, USER, Scope("key", "ten_1", 7, key_id="key_1")), PERIOD, 42)
    assert BudgetHold.from_json(hold.to_json()) == hold
    assert BudgetHold.from_json(hold.to_json().encode()) == hold


def test_a_spent_budget_refuses_even_a_call_that_costs_nothing(rdb: redis.Redis) -> None:
    ledger = BudgetLedger(rdb)
    hold = _reserve(ledger, [TENANT], TENANT.budget_units).hold
    assert hold is not None
    ledger.settle(hold, TENANT.budget_units, now=NOW)
    assert _reserve(ledger, [TENANT], 0).refused == TENANT


def test_an_unseeded_scope_is_seeded_once_from_the_database(rdb: redis.Redis) -> None:
    ledger = BudgetLedger(rdb)
    calls: list[list[str]] = []

    def seed(scopes: Sequence[Scope], period: Period) -> list[int]:
        calls.append([s.name for s in scopes])
        return [300 for _ in scopes]

    assert _reserve(ledger, [TENANT, USER], 100, seed=seed).hold is not None
    assert _reserve(ledger, [TENANT, USER], 100, seed=seed).hold is not None
    assert calls == [["tenant:ten_1", "user:ten_1:alice"]]  # the second found both seeded
    assert ledger.balance(TENANT, PERIOD) == (300, 200, True)


def test_two_workers_seeding_at_once_add_the_database_once(rdb: redis.Redis) -> None:
    first, second = BudgetLedger(rdb), BudgetLedger(rdb)

    def seed_racing_the_other(scopes: Sequence[Scope], period: Period) -> list[int]:
        # While this worker reads the database, the other seeds and reserves.
        assert _reserve(second, scopes, 10, seed=lambda s, p: [500 for _ in s]).hold is not None
        return [500 for _ in scopes]

    assert _reserve(first, [TENANT], 10, seed=seed_racing_the_other).hold is not None
    assert ledger_spent(first, TENANT) == 500


def test_a_settle_on_a_lost_account_is_kept_and_the_seed_adds_the_database(rdb: redis.Redis) -> None:
    ledger = BudgetLedger(rdb)
    hold = _reserve(ledger, [TENANT], 100).hold
    assert hold is not None
    for key in done(rdb.keys("llmq:budget:*")):
        rdb.delete(key)  # Redis lost everything
    ledger.settle(hold, 80, now=NOW)
    assert ledger.balance(TENANT, PERIOD) == (80, 0, False)
    assert _reserve(ledger, [TENANT], 1, seed=lambda s, p: [1000 for _ in s]).hold is not None
    assert ledger_spent(ledger, TENANT) == 1080  # the over-count, on the safe side


def ledger_spent(ledger: BudgetLedger, scope: Scope) -> int:
    return ledger.balance(scope, PERIOD)[0]


# --- the gate's budget stage -------------------------------------------------------------------------

MODEL = "sim/priced"


def _policy(**budgets: Any) -> TenantPolicy:
    values: dict[str, Any] = {"budget_usd": None, "user_budget_usd": None, "key_budget_usd": None}
    values.update(budgets)
    return TenantPolicy(
        tenant_id="ten_1",
        tier="unlimited",
        rpm=None,
        tpm=None,
        concurrency=None,
        weight=1,
        budget_period="month",
        thresholds=(),
        webhook_url=None,
        **values,
    )


def _runtime(client: redis.Redis, policy: TenantPolicy | None) -> Any:
    providers = ProvidersConfig(
        models={MODEL: ModelConfig(input_usd_per_mtok=Decimal(10), output_usd_per_mtok=Decimal(30))}
    )
    return gate_runtime(client, providers, lambda tenant_id, key_id: policy)


def _claim(job_id: str, *, wait: bool = False, max_tokens: int = 100) -> ClaimedJob:
    return ClaimedJob(
        job_id=job_id,
        tenant_id="ten_1",
        lease_token="lease",
        attempt_number=1,
        max_attempts=5,
        model=MODEL,
        messages=[{"role": "user", "content": "hello there"}],
        max_tokens=max_tokens,
        temperature=None,
        user=None,
        deadline_at=None,
        requested_model=MODEL,
        budget_wait=wait,
    )


def _worst_case(claim: ClaimedJob) -> int:
    assert claim.max_tokens is not None
    return estimate_input_tokens(claim.messages) * 1000 + claim.max_tokens * 3000  # units


def _seed_now(rt: Any, scope: Scope) -> None:
    period = period_of("month", datetime.now(UTC))
    rt.budgets.reserve([scope], period, 0, lifetime_s=0, seed=_no_seed, now=NOW)


def test_a_job_without_a_budget_costs_no_redis_round_trip(rdb: redis.Redis) -> None:
    rt = _runtime(rdb, _policy())
    go = gate(rt, _claim("job_a"))
    assert isinstance(go, Go) and go.budget is None
    after_call(rt, go, CallEnd(sent=True, transient_failure=False, total_tokens=10, cost_usd=Decimal(1)))
    assert rdb.keys("llmq:budget:*") == []


def test_a_job_over_budget_is_refused_with_what_was_left(rdb: redis.Redis) -> None:
    claim = _claim("job_a")
    budget = to_usd(_worst_case(claim) * 3 // 2)  # room for one call's worst case, not two
    rt = _runtime(rdb, _policy(budget_usd=budget))
    tenant = Scope("tenant", "ten_1", to_units(budget))
    _seed_now(rt, tenant)
    first = gate(rt, claim)
    assert isinstance(first, Go) and first.budget is not None
    second = gate(rt, _claim("job_b"))
    assert isinstance(second, Refuse) and second.error_type == "budget_exceeded"
    assert "the tenant's budget" in second.message and "needed $" in second.message
    after_call(rt, first, CallEnd(sent=True, transient_failure=False, total_tokens=10, cost_usd=to_usd(1000)))
    assert isinstance(gate(rt, _claim("job_c")), Go)  # the settle freed the rest of the worst case


def test_a_job_that_asked_to_wait_parks_until_the_next_period(rdb: redis.Redis) -> None:
    claim = _claim("job_a", wait=True)
    rt = _runtime(rdb, _policy(budget_usd=to_usd(_worst_case(claim))))
    _seed_now(rt, Scope("tenant", "ten_1", _worst_case(claim)))
    assert isinstance(gate(rt, claim), Go)
    parked = gate(rt, _claim("job_b", wait=True))
    assert isinstance(parked, Park) and parked.reason == "budget"
    assert parked.until == period_of("month", datetime.now(UTC)).end


def test_a_job_whose_worst_case_exceeds_the_whole_budget_fails_even_if_it_would_wait(
    rdb: redis.Redis,
) -> None:
    claim = _claim("job_a", wait=True)
    rt = _runtime(rdb, _policy(budget_usd=to_usd(_worst_case(claim) - 1)))
    _seed_now(rt, Scope("tenant", "ten_1", _worst_case(claim) - 1))
    assert isinstance(gate(rt, claim), Refuse)


@pytest.mark.parametrize("sent", [False, True])
def test_a_call_never_sent_gives_its_reservation_back_and_a_sent_one_settles(
    rdb: redis.Redis, sent: bool
) -> None:
    claim = _claim("job_a")
    budget = _worst_case(claim)
    rt = _runtime(rdb, _policy(budget_usd=to_usd(budget)))
    tenant = Scope("tenant", "ten_1", budget)
    _seed_now(rt, tenant)
    go = gate(rt, claim)
    assert isinstance(go, Go) and go.budget is not None
    after_call(rt, go, CallEnd(sent=sent, transient_failure=True, total_tokens=None))  # no cost known
    spent, held, _ = rt.budgets.balance(tenant, go.budget.period)
    assert (spent, held) == (0, 0)
