"""Fleet-wide rate limits per provider/model, shared by every worker process and host through Redis:
requests per window (``rpm``), tokens per window (``tpm``) and calls in flight (``concurrency``),
and the line of jobs waiting for them.

Every check-and-change is one Lua script (``llmq/workers/lua/ratelimit_*.lua``, read at import),
so two workers can never both take the last unit of capacity, and every script reads the clock of
the Redis server (``TIME``), never the client's, so hosts with skewed clocks agree on what the
window holds.

Requests and tokens — one sliding log, checked together::

    llmq:rl:<model>:log    ZSET  reservation id → admission time (µs, Redis clock)
    llmq:rl:<model>:tok    HASH  reservation id → tokens reserved (then the tokens actually used)
    llmq:rl:<model>:sum    STR   sum of :tok over the entries still in the window

The window is exact, not a pair of fixed buckets: an admission at time t is refused while ``rpm``
admissions lie in (t - window_s, t], so no interval of ``window_s`` seconds ever holds more than
``rpm`` admissions, whichever workers made them. A refused :class:`Admission` carries
``retry_in_s``, the exact moment the entry blocking it leaves the window, so a waiting job can be
parked until then instead of polling.

Tokens (TPM): a call reserves, before it is made, its estimated prompt tokens plus its
``max_tokens`` (or the default max tokens when the job gives none) —
:func:`llmq.workers.tokens.estimate_tokens`.
Output is reserved up front because providers count it against TPM too, and because an
under-reservation is what turns into the provider's 429; after the call, :meth:`settle` replaces
the reservation with the total tokens the provider reported, usually freeing most of the output
reservation at once. A reservation larger than the whole ``tpm`` is cut to ``tpm`` (admitted when
the window holds no tokens at all), so that it can ever run. A call that was never sent can give
its request and tokens back with :meth:`cancel`.

Calls in flight — a distributed semaphore with leases::

    llmq:rl:<model>:slots  ZSET  holder → lease expiry (µs, Redis clock)

A worker renews its holders' leases while their calls run (:meth:`renew_slot`, every
``lease_s / 3`` or so); one that dies stops renewing, and its slot is free again ``lease_s`` later
at most. Renewing a lease that has already expired does not bring it back (that could exceed the
cap): the holder is reported lost instead.

The line — jobs waiting for a model, in fair shares between tenants::

    llmq:rl:<model>:line         ZSET  turn → virtual-time tag (one turn per waiting job)
    llmq:rl:<model>:fq:<t>:s     ZSET  tenant t's turns → their tags (the same entries)
    llmq:rl:<model>:fq:<t>:j     ZSET  tenant t's waiting jobs → their order (interactive first)
    llmq:rl:<model>:owner        HASH  job id → its tenant
    llmq:rl:<model>:due          ZSET  job id → when its place lapses unless it asks again (µs)
    llmq:rl:<model>:want         HASH  job id → the tokens it will reserve (models with a tpm only)

- **Fair shares (start-time fair queueing).** One first-come line per model would let a tenant
  with 10,000 jobs waiting hold everyone else back by 10,000 calls. Instead a waiting job holds a
  *turn* of its tenant, and the line is ordered by the turns' virtual-time tags: a tenant's new
  turn is tagged ``max(V, its last turn's tag + 1 / weight)``, V being the tag of the turn at the
  head of the line (0 when the line is empty). So tenants that are waiting take turns round
  robin, a tenant of weight 4 (its tier's ``weight``) four to one of weight 1; a tenant that
  joins late starts at the head's tag, next to the head, not behind the backlog; and a tenant
  earns no credit while it has nothing waiting (its tags restart from V). Equal tags go in the
  order they joined (a turn is named ``<µs of the join>|<tag>|<tenant>``).
- **Priority within a tenant.** A tenant's jobs share its turns: its k-th job, in the order
  interactive first then bulk (first come, first served within each), holds its k-th turn. An
  interactive job that joins behind its tenant's bulk backlog adds one turn at the tenant's end
  and takes the first turn after the tenant's other interactive jobs; the tenant's bulk jobs move
  back by one of its own turns. So interactive work overtakes bulk work of the same tenant, and
  the tenant never holds more turns than it has jobs: other tenants' places do not move. (Tagging
  interactive jobs as a separate flow would have given a tenant with both kinds twice its share.)
- A job's *rank* is then the rank of the turn it holds, and everything below holds unchanged.
  Per-tenant state is only the tenant's waiting turns and jobs, emptied as they leave and expiring
  with the line. Why not tag each job directly: a tag is fixed when the job joins, so interactive
  overtaking would mean re-tagging the tenant's whole bulk backlog; with turns it is one entry.

One script, :meth:`RateLimiter.acquire`, checks everything a call needs at once — a slot (when a
``holder`` is given and the model has a cap), a request and its tokens — and the line:

- **Admission rule.** A job's *rank* is the number of jobs ahead of it in the line; a job not in the
  line ranks after all of them if it has no ``job_id``; a new arrival with one first takes its
  fair place (above), and leaves it again in the same script if it is admitted. A job is admitted
  only if it would still fit once every job ahead of it had been admitted: ``held + rank < cap``,
  ``count + rank < rpm`` and ``used + (tokens wanted by the jobs ahead) + tokens <= tpm``. So a
  waiting job may take the capacity nobody ahead of it needs (the line never leaves capacity
  unused for long), but never the unit the job ahead is waiting for: a new arrival cannot jump the
  line, and a job whose turn it is is not overtaken by one that woke earlier. With an empty line
  this is the plain check, and the admission costs nothing more than it did without a line (no
  extra round trip, no line write). An admitted job leaves the line in the same script.
- **Joining and keeping a place.** A refused job with a ``job_id`` joins the line (once: a job
  that is refused again keeps its turn, overtaken only by its own tenant's interactive jobs) and
  its ``due`` moves to now + its wait + ``grace_s``. Every script first drops the entries past
  their ``due``: a job that was cancelled, expired, answered from the cache or lost with its
  worker stops holding its place (its turn goes with it) — and the unit it would take —
  ``grace_s`` after it should have come back, so a dead entry can delay the line
  but never stop it. The gate passes ``grace_s = max_countdown_s + 2 * sweep_interval_s``: a long
  wait parks the job in the database and the sweeper (every ``sweep_interval_s``) enqueues it when
  due, so a job that waits legitimately comes back well within its grace.
- **Wake times by rank.** A refusal answers when the job's turn should come, so waiting jobs wake
  in line order: for rpm, the job at rank r needs the jobs ahead and itself to fit, that is
  ``count - rpm + 1 + r`` entries gone — it waits until the entry at index ``count - rpm + r`` of
  the log leaves (a job ``rpm`` or more places back, whose turn depends on admissions not yet
  made, waits ``floor(rank / rpm)`` windows — at most ``rpm`` admissions fit in a window, so its
  turn cannot come sooner — but at most ``RPM_WAIT_WINDOWS_MAX``, as jobs ahead may leave
  early); for tpm, until enough tokens leave to cover its own tokens and those the jobs ahead
  want; for a full cap (a slot frees when some call ends, at no known time), a
  short poll that grows with the rank (``SLOT_POLL_S + rank * SLOT_RANK_STEP_S``, at most
  ``SLOT_WAIT_MAX_S``). A refused job that is not first in line waits at least ``TURN_WAIT_S``,
  never a few µs: no busy loop while the head of the line is on its way.

Every key has a TTL (the window, the longest lease, or the latest ``due`` of the line) renewed on
writes, so the keys of an idle model vanish. The ``llmq:rl`` prefix is ``RATELIMIT_PREFIX`` in
``workers/keys.py``. A model with no ``rpm``/``tpm`` and no
``concurrency`` in the providers file is not limited and costs no Redis round trip.

What counts is the Redis clock at admission: the provider counts by its own clock when the request
reaches it. Set limits a little under the account's (see ``providers.default.toml``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import redis

from llmq.config.providers_file import ProvidersConfig
from llmq.workers.keys import RATELIMIT_PREFIX
from llmq.workers.lua import load_lua

__all__ = ["Admission", "ModelLimits", "RateLimiter"]

_US = 1_000_000
_KEY_TTL_MARGIN_MS = 1000
# Waiting in line (see the module's notes). A full cap frees up when some call ends: look again
# soon, the first in line most often.
SLOT_POLL_S = 0.2
SLOT_RANK_STEP_S = 0.02
SLOT_WAIT_MAX_S = 2.0
# The least wait of a job refused only because it is not first in line.
TURN_WAIT_S = 0.05
# A job rpm or more places back waits floor(rank / rpm) windows, at most this many.
RPM_WAIT_WINDOWS_MAX = 4
# How long past its wait a job keeps its place when it does not ask again (callers pass theirs).
LINE_GRACE_S = 20.0


# --- scripts -----------------------------------------------------------------------------------

# llmq/workers/lua/: the request/token scripts start with ratelimit_prologue (the Redis clock,
# the eviction of the window); the slot scripts with ratelimit_slots_prologue (the clock, the
# eviction of expired leases). Each file says its KEYS and ARGV.
ADMIT_LUA = load_lua("ratelimit_prologue", "ratelimit_line", "ratelimit_acquire")
SETTLE_LUA = load_lua("ratelimit_prologue", "ratelimit_settle")
CANCEL_LUA = load_lua("ratelimit_prologue", "ratelimit_cancel")
USAGE_LUA = load_lua("ratelimit_prologue", "ratelimit_usage")
RENEW_SLOTS_LUA = load_lua("ratelimit_slots_prologue", "ratelimit_renew_slots")
RELEASE_SLOT_LUA = load_lua("ratelimit_slots_prologue", "ratelimit_release_slot")
LEAVE_LINE_LUA = load_lua("ratelimit_line", "ratelimit_leave_line")
LINE_ORDER_LUA = load_lua("ratelimit_line", "ratelimit_line_order")


# --- API ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """The answer of :meth:`RateLimiter.acquire`.

    ``allowed``: the call may go now; its request and tokens are counted under ``reservation``
    (pass it to :meth:`RateLimiter.settle` after the call; None when the model has no rpm/tpm) and
    its slot, when one was asked for, is held. ``retry_in_s``: when not allowed, the seconds until
    the call's turn should come (0 when allowed). ``admitted_at``: the Redis clock (unix seconds)
    at admission, for logs and tests. ``ahead``: how many jobs were ahead of it in the model's
    line when it asked (0 when the line was empty)."""

    allowed: bool
    retry_in_s: float
    reservation: str | None
    admitted_at: float | None = None
    ahead: int = 0


@dataclass(frozen=True)
class _Flow:
    """Whose turn a job takes in a model's line: its tenant's, at the tenant's weight, and before
    (interactive) or after (bulk) the tenant's other jobs."""

    tenant: str = ""
    weight: int = 1
    bulk: bool = False


@dataclass(frozen=True)
class ModelLimits:
    """A model's limits, from its providers-file table; None means no limit."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None


class RateLimiter:
    """The fleet-wide limits of every model in a providers file, kept in ``client``'s Redis.

    ``window_s`` overrides the file's ``[limits] window_s`` (tests use a short one); ``prefix``
    the key prefix."""

    def __init__(
        self,
        client: redis.Redis,
        config: ProvidersConfig,
        *,
        window_s: float | None = None,
        prefix: str = RATELIMIT_PREFIX,
    ) -> None:
        self._redis = client
        self._config = config
        self.window_s = float(window_s if window_s is not None else config.limits.window_s)
        if self.window_s <= 0:
            raise ValueError("window_s must be positive")
        self.lease_s = float(config.limits.lease_s)
        self._prefix = prefix
        self._window_us = int(self.window_s * _US)
        self._key_ttl_ms = int(self.window_s * 1000) + _KEY_TTL_MARGIN_MS
        self._admit = client.register_script(ADMIT_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._cancel = client.register_script(CANCEL_LUA)
        self._renew_slots = client.register_script(RENEW_SLOTS_LUA)
        self._release_slot = client.register_script(RELEASE_SLOT_LUA)
        self._leave_line = client.register_script(LEAVE_LINE_LUA)
        self._line_order = client.register_script(LINE_ORDER_LUA)
        self._usage = client.register_script(USAGE_LUA)

    # --- keys and limits ---

    def _keys(self, model: str) -> list[str]:
        base = f"{self._prefix}:{model}"
        return [f"{base}:log", f"{base}:tok", f"{base}:sum"]

    def _slots_key(self, model: str) -> str:
        return f"{self._prefix}:{model}:slots"

    def _line_keys(self, model: str) -> list[str]:
        base = f"{self._prefix}:{model}"
        return [f"{base}:line", f"{base}:due", f"{base}:want", f"{base}:owner"]

    def _tenant_prefix(self, model: str) -> str:
        """Of each waiting tenant's two keys: ``<prefix>:<model>:fq:<tenant>:s`` (its turns) and
        ``...:j`` (its jobs in the order they take them)."""
        return f"{self._prefix}:{model}:fq:"

    def limits(self, model: str) -> ModelLimits:
        cfg = self._config.model(model)
        if cfg is None:
            return ModelLimits()
        return ModelLimits(rpm=cfg.rpm, tpm=cfg.tpm, concurrency=cfg.concurrency)

    # --- admission ---

    def acquire(
        self,
        model: str,
        tokens_estimate: int,
        *,
        holder: str | None = None,
        job_id: str | None = None,
        lease_s: float | None = None,
        grace_s: float = LINE_GRACE_S,
        tenant: str = "",
        weight: int = 1,
        priority: str = "interactive",
    ) -> Admission:
        """Admit one call to ``model`` when every limit has room for it, all or nothing: a request
        and ``tokens_estimate`` tokens against its rpm and tpm and, with a ``holder`` on a model
        with a cap, a concurrency slot for ``holder`` (for ``lease_s``, default ``[limits]
        lease_s``); else say when to try again.

        Jobs already waiting in the model's line come first (see the module's notes). With a
        ``job_id``, a refused call joins the line (or keeps its place in it) for ``grace_s``
        beyond the wait it is given, and an admitted one leaves it; without, the call waits behind
        the line but never joins it. In the line, ``tenant``'s jobs take ``weight`` turns to a
        weight-1 tenant's one, and its ``"interactive"`` jobs go before its ``"bulk"`` ones
        (``priority``). Unlimited models are always admitted, with no reservation and no Redis
        round trip."""
        limits = self.limits(model)
        if holder is None:
            limits = replace(limits, concurrency=None)
        if limits.rpm is None and limits.tpm is None and limits.concurrency is None:
            return Admission(allowed=True, retry_in_s=0.0, reservation=None)
        flow = _Flow(tenant, max(1, int(weight)), priority == "bulk")
        return self._run_admit(model, limits, tokens_estimate, holder, job_id, lease_s, grace_s, flow)

    def _run_admit(
        self,
        model: str,
        limits: ModelLimits,
        tokens_estimate: int,
        holder: str | None,
        job_id: str | None,
        lease_s: float | None,
        grace_s: float,
        flow: _Flow | None = None,
    ) -> Admission:
        member = uuid.uuid4().hex
        flow = flow or _Flow()
        result = self._admit(
            keys=[*self._keys(model), self._slots_key(model), *self._line_keys(model)],
            args=[
                self._window_us,
                limits.rpm or 0,
                limits.tpm or 0,
                max(0, int(tokens_estimate)),
                member,
                self._key_ttl_ms,
                limits.concurrency or 0,
                holder or "",
                self._lease_us(lease_s),
                job_id or "",
                int(max(0.0, grace_s) * _US),
                int(SLOT_POLL_S * _US),
                int(SLOT_RANK_STEP_S * _US),
                int(SLOT_WAIT_MAX_S * _US),
                int(TURN_WAIT_S * _US),
                flow.tenant,
                flow.weight,
                "1" if flow.bulk else "0",
                self._tenant_prefix(model),
                RPM_WAIT_WINDOWS_MAX,
            ],
        )
        ok, value, ahead = int(result[0]), int(result[1]), int(result[2])
        if not ok:
            return Admission(False, value / _US, None, ahead=ahead)
        reservation = f"{model}#{member}" if limits.rpm is not None or limits.tpm is not None else None
        return Admission(True, 0.0, reservation, admitted_at=value / _US, ahead=ahead)

    def leave_line(self, model: str, job_id: str) -> bool:
        """Take ``job_id`` out of ``model``'s line (it went elsewhere). True when it was in it."""
        return bool(self._leave_line(keys=self._line_keys(model), args=[job_id, self._tenant_prefix(model)]))

    def line(self, model: str) -> list[str]:
        """The ids of the jobs waiting in ``model``'s line, in the order they will be served."""
        order = self._line_order(keys=self._line_keys(model), args=[self._tenant_prefix(model)])
        return [_text(job) for job in order]

    # --- requests and tokens ---

    def settle(self, reservation: str | None, actual_total_tokens: int) -> int:
        """Replace a reservation's tokens by what the call used (prompt + completion tokens, as
        the provider reported them). Returns the tokens added to the window (negative: freed);
        0 when there is nothing to correct (no reservation, or it already left the window)."""
        if reservation is None:
            return 0
        model, member = _split_reservation(reservation)
        result = self._settle(
            keys=self._keys(model),
            args=[self._window_us, member, max(0, int(actual_total_tokens)), self._key_ttl_ms],
        )
        return 0 if result is None else int(result)

    def cancel(self, reservation: str | None) -> bool:
        """Give back the request and tokens of a call that was never sent (the job was cancelled,
        or a breaker refused it after admission). Not for a call that reached the provider: the
        provider counted it."""
        if reservation is None:
            return False
        model, member = _split_reservation(reservation)
        return bool(self._cancel(keys=self._keys(model), args=[self._window_us, member]))

    # --- calls in flight ---

    def _lease_us(self, lease_s: float | None) -> int:
        lease = self.lease_s if lease_s is None else float(lease_s)
        if lease <= 0:
            raise ValueError("lease_s must be positive")
        return int(lease * _US)

    def renew_slot(self, model: str, holders: Iterable[str], lease_s: float | None = None) -> list[str]:
        """Extend the leases of ``holders`` to ``lease_s`` from now. Returns the holders that had
        already lost their slot (lease expired, or released): their calls are running without
        one, and should be stopped or at least logged."""
        holders = list(holders)
        if not holders or self.limits(model).concurrency is None:
            return []
        lost = self._renew_slots(keys=[self._slots_key(model)], args=[self._lease_us(lease_s), *holders])
        return [_text(h) for h in lost]

    def release_slot(self, model: str, holder: str) -> bool:
        """Give ``holder``'s slot back. True when it still held one."""
        if self.limits(model).concurrency is None:
            return False
        return bool(self._release_slot(keys=[self._slots_key(model)], args=[holder]))

    # --- reporting ---

    def usage(self, model: str) -> dict[str, Any]:
        """What ``model`` uses of its limits right now (for ``GET /v1/providers``)::

        {"window_s", "rpm_limit", "rpm_used", "tpm_limit", "tpm_used",
         "concurrency_limit", "in_flight", "waiting"}   (limits are None when not set)

        ``waiting``: the jobs in the model's line (refused, and not yet past their grace).
        """
        limits = self.limits(model)
        count, used, in_flight, waiting = (
            int(v)
            for v in self._usage(
                keys=[*self._keys(model), self._slots_key(model), self._line_keys(model)[1]],
                args=[self._window_us],
            )
        )
        return {
            "window_s": self.window_s,
            "rpm_limit": limits.rpm,
            "rpm_used": count,
            "tpm_limit": limits.tpm,
            "tpm_used": used,
            "concurrency_limit": limits.concurrency,
            "in_flight": in_flight,
            "waiting": waiting,
        }


def fleet_limiter(client: redis.Redis, config: ProvidersConfig) -> RateLimiter:
    """The limiter workers and the API use: admissions counted over the file's window plus its
    margin (``[limits] margin_s``), so the provider's own window holds the limit."""
    return RateLimiter(client, config, window_s=config.limits.window_s + config.limits.margin_s)


def _split_reservation(reservation: str) -> tuple[str, str]:
    model, sep, member = reservation.rpartition("#")
    if not sep or not model or not member:
        raise ValueError(f"not a reservation: {reservation!r}")
    return model, member


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
