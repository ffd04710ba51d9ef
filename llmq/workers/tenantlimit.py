"""Fleet-wide limits per tenant, or per API key: requests per minute at submit (``rpm``), tokens
per minute (``tpm``) and calls in flight (``concurrency``), counted in Redis by every API and
worker process alike, so that a tenant's cap holds across the whole fleet (never one process's
memory).

The limits come from the tenant's tier (``[tiers.<name>]`` of the providers file), overridden by
the tenant's own, overridden by the key's own (:func:`llmq.models.tenants.policy_of`). Each limit
is counted in the *scope* that set it: a limit the key sets itself counts that key's requests
alone (``key:<id>``); one it takes from its tenant or tier counts every such request of the tenant
(``tenant:<id>``). So a key given a higher rpm than its tier's is not held back by its siblings,
and a key given a lower one cannot take the tenant's whole allowance.

The counting is :mod:`llmq.workers.ratelimit`'s, run on other keys: the same Lua scripts, the
same exact sliding window, the same leased slots, the same line (a tenant's jobs waiting for its
own capacity wake in the order they first waited, with waits growing with their rank, so a
tenant with thousands of jobs queued behind its concurrency does not poll the broker hot; a
tenant's ``interactive`` jobs wait ahead of its ``bulk`` ones, as a tenant's do in a model's fair
line, the whole scope being one tenant there)::

    llmq:tl:<scope>:req:log|tok|sum   requests at submit (POST /v1/jobs), window 60 s
    llmq:tl:<scope>:tok:log|tok|sum   tokens reserved before each call, settled after it
    llmq:tl:<scope>:slots             calls in flight, each a lease renewed while it runs
    llmq:tl:<scope>:line|due|want|owner, :fq:*   the tenant's jobs waiting for its own capacity

A worker renews the leases of the slots it holds every ``lease_s / 3`` on a thread of its own
(:meth:`TenantLimiter.start_renewing`); a worker that dies stops renewing, and its slots are free
``lease_s`` later at most. A tenant whose policy has no tpm and no concurrency costs no Redis
round trip at call time; one with no rpm none at submit.
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import redis
import structlog

from llmq.workers.keys import TENANT_LIMIT_PREFIX
from llmq.workers.ratelimit import (
    ADMIT_LUA,
    CANCEL_LUA,
    RELEASE_SLOT_LUA,
    RENEW_SLOTS_LUA,
    RPM_WAIT_WINDOWS_MAX,
    SETTLE_LUA,
    USAGE_LUA,
)

__all__ = ["TenantAdmission", "TenantHold", "TenantLimiter"]

logger = structlog.get_logger(__name__)

_US = 1_000_000
_KEY_TTL_MARGIN_MS = 1000
TENANT_WINDOW_S = 60.0  # "per minute"
# A tenant's full concurrency frees up when one of its calls ends: the first in its line looks
# again soon, the ones far back rarely (at most every SLOT_WAIT_MAX_S).
SLOT_POLL_S = 0.2
SLOT_RANK_STEP_S = 0.05
SLOT_WAIT_MAX_S = 5.0
TURN_WAIT_S = 0.05


@dataclass(frozen=True)
class TenantHold:
    """What an admitted call took from its tenant: tokens in a scope's window (``tokens``: scope
    and reservation id) and a slot (``slot``: scope and holder)."""

    tokens: tuple[str, str] | None
    slot: tuple[str, str] | None


@dataclass(frozen=True)
class TenantAdmission:
    allowed: bool
    retry_in_s: float  # 0 when allowed
    hold: TenantHold | None  # None when refused, or when nothing needed holding


class TenantLimiter:
    """The tenants' limits in ``client``'s Redis. ``window_s``: the rpm/tpm window (tests may
    shorten it); ``lease_s``: the lease of a slot (``[limits] lease_s``)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        window_s: float = TENANT_WINDOW_S,
        lease_s: float = 60.0,
        prefix: str = TENANT_LIMIT_PREFIX,
    ) -> None:
        if window_s <= 0 or lease_s <= 0:
            raise ValueError("window_s and lease_s must be positive")
        self._redis = client
        self._prefix = prefix
        self.window_s = float(window_s)
        self.lease_s = float(lease_s)
        self._window_us = int(self.window_s * _US)
        self._key_ttl_ms = int(self.window_s * 1000) + _KEY_TTL_MARGIN_MS
        self._admit = client.register_script(ADMIT_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._cancel = client.register_script(CANCEL_LUA)
        self._renew_slots = client.register_script(RENEW_SLOTS_LUA)
        self._release_slot = client.register_script(RELEASE_SLOT_LUA)
        self._usage = client.register_script(USAGE_LUA)
        self._held: dict[str, str] = {}  # holder → scope, the slots this process renews
        self._held_lock = threading.Lock()
        self._renewer: _SlotRenewer | None = None

    # --- keys ---

    def _window_keys(self, scope: str, what: str) -> list[str]:
        base = f"{self._prefix}:{scope}:{what}"
        return [f"{base}:log", f"{base}:tok", f"{base}:sum"]

    def _slots_key(self, scope: str) -> str:
        return f"{self._prefix}:{scope}:slots"

    def _line_keys(self, scope: str) -> list[str]:
        base = f"{self._prefix}:{scope}"
        return [f"{base}:line", f"{base}:due", f"{base}:want", f"{base}:owner"]

    # --- rpm at submit ---

    def count_request(self, scope: str, rpm: int) -> float | None:
        """Count one request of ``scope`` against ``rpm``: None when it fits (it is counted),
        else the seconds until it would (it is not counted)."""
        result = self._admit(
            # A line of its own, always empty (no job joins it): the jobs waiting in the tenant's
            # line for its tokens or slots must not count against its requests at submit.
            keys=[*self._window_keys(scope, "req"), self._slots_key(scope), *self._line_keys(f"{scope}:req")],
            args=self._args(rpm=rpm, tpm=0, tokens=0, member=uuid.uuid4().hex),
        )
        return None if int(result[0]) else int(result[1]) / _US

    # --- tokens and slots at call time ---

    def acquire(
        self,
        *,
        job_id: str,
        holder: str,
        tokens: int,
        tpm: int | None,
        tpm_scope: str,
        concurrency: int | None,
        slot_scope: str,
        grace_s: float,
        bulk: bool = False,
    ) -> TenantAdmission:
        """Take ``tokens`` of ``tpm_scope``'s tpm and one of ``slot_scope``'s ``concurrency``
        slots for ``holder``, all or nothing. A refused job keeps (or takes) its place in its
        tenant's line for ``grace_s`` past the wait it is given; a ``bulk`` job's place is
        behind every interactive job of the line (see :meth:`_bulk_place`)."""
        if tpm is None and concurrency is None:
            return TenantAdmission(True, 0.0, None)
        member = uuid.uuid4().hex
        line_scope = slot_scope if concurrency is not None else tpm_scope
        result = self._admit(
            keys=[
                *self._window_keys(tpm_scope, "tok"),
                self._slots_key(slot_scope),
                *self._line_keys(line_scope),
            ],
            args=self._args(
                rpm=0,
                tpm=tpm or 0,
                tokens=tokens,
                member=member,
                cap=concurrency or 0,
                holder=holder,
                job_id=job_id,
                grace_s=grace_s,
                line_scope=line_scope,
                bulk=bulk,
            ),
        )
        if not int(result[0]):
            return TenantAdmission(False, int(result[1]) / _US, None)
        hold = TenantHold(
            tokens=(tpm_scope, member) if tpm is not None else None,
            slot=(slot_scope, holder) if concurrency is not None else None,
        )
        if hold.slot is not None:
            with self._held_lock:
                self._held[holder] = slot_scope
        return TenantAdmission(True, 0.0, hold)

    def _args(
        self,
        *,
        rpm: int,
        tpm: int,
        tokens: int,
        member: str,
        cap: int = 0,
        holder: str = "",
        job_id: str = "",
        grace_s: float = 0.0,
        line_scope: str = "",
        bulk: bool = False,
    ) -> list[int | str]:
        return [
            self._window_us,
            rpm,
            tpm,
            max(0, int(tokens)),
            member,
            self._key_ttl_ms,
            cap,
            holder,
            int(self.lease_s * _US),
            job_id,
            int(max(0.0, grace_s) * _US),
            int(SLOT_POLL_S * _US),
            int(SLOT_RANK_STEP_S * _US),
            int(SLOT_WAIT_MAX_S * _US),
            int(TURN_WAIT_S * _US),
            # The line's turns (ratelimit.py's fair line): every job of the scope is one flow, so
            # the line is first come, first served, the scope's interactive jobs ahead of its bulk.
            line_scope,
            1,
            "1" if bulk else "0",
            f"{self._prefix}:{line_scope}:fq:",
            RPM_WAIT_WINDOWS_MAX,
        ]

    def release(self, hold: TenantHold | None, *, sent: bool, total_tokens: int | None) -> None:
        """The call ended: its slot back; its tokens settled to what the provider reported, or
        given back when the call never reached the provider."""
        if hold is None:
            return
        self._give_slot(hold)
        if hold.tokens is None:
            return
        scope, member = hold.tokens
        if not sent:
            self._cancel(keys=self._window_keys(scope, "tok"), args=[self._window_us, member])
        elif total_tokens is not None:
            self._settle(
                keys=self._window_keys(scope, "tok"),
                args=[self._window_us, member, max(0, int(total_tokens)), self._key_ttl_ms],
            )

    def undo(self, hold: TenantHold | None) -> None:
        """Give back everything of a call that will not be made."""
        self.release(hold, sent=False, total_tokens=None)

    def _give_slot(self, hold: TenantHold) -> None:
        if hold.slot is None:
            return
        scope, holder = hold.slot
        with self._held_lock:
            self._held.pop(holder, None)
        self._release_slot(keys=[self._slots_key(scope)], args=[holder])

    # --- leases of the slots this process holds ---

    def renew_held(self) -> list[str]:
        """Extend the lease of every slot this process holds. Returns the holders that had lost
        theirs already (they are forgotten: their calls run on, uncounted, and say so in a log)."""
        with self._held_lock:
            by_scope: dict[str, list[str]] = defaultdict(list)
            for holder, scope in self._held.items():
                by_scope[scope].append(holder)
        lost: list[str] = []
        for scope, holders in by_scope.items():
            gone = self._renew_slots(keys=[self._slots_key(scope)], args=[int(self.lease_s * _US), *holders])
            lost.extend(h.decode() if isinstance(h, bytes) else str(h) for h in gone)
        if lost:
            with self._held_lock:
                for holder in lost:
                    self._held.pop(holder, None)
            logger.warning("tenant_slots_lost", holders=len(lost))
        return lost

    def start_renewing(self) -> None:
        """Renew the held slots every ``lease_s / 3`` on a daemon thread (once per process)."""
        with self._held_lock:
            if self._renewer is None:
                self._renewer = _SlotRenewer(self)
                self._renewer.start()

    def stop_renewing(self) -> None:
        with self._held_lock:
            renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.stop()

    def usage(self, *, rpm_scope: str, tpm_scope: str, slot_scope: str) -> dict[str, int]:
        """What the scopes use now: ``requests`` at submit and ``tokens`` in the window,
        ``in_flight`` calls and ``waiting`` jobs (in the tenant's own line)."""
        requests = self._usage(
            keys=[
                *self._window_keys(rpm_scope, "req"),
                self._slots_key(slot_scope),
                self._line_keys(slot_scope)[1],
            ],
            args=[self._window_us],
        )
        tokens = self._usage(
            keys=[
                *self._window_keys(tpm_scope, "tok"),
                self._slots_key(slot_scope),
                self._line_keys(tpm_scope)[1],
            ],
            args=[self._window_us],
        )
        return {
            "requests": int(requests[0]),
            "tokens": int(tokens[1]),
            "in_flight": int(requests[2]),
            "waiting": max(int(requests[3]), int(tokens[3])),
        }

    def slots_in_use(self, scope: str) -> int:
        """How many of ``scope``'s slots are held now (expired leases not counted, by the Redis
        clock)."""
        seconds, micros = cast(tuple[int, int], self._redis.time())
        held = self._redis.zcount(self._slots_key(scope), seconds * _US + micros + 1, "+inf")
        return int(cast(int, held))


class _SlotRenewer(threading.Thread):
    def __init__(self, limiter: TenantLimiter) -> None:
        super().__init__(name="llmq-tenant-slots", daemon=True)
        self._limiter = limiter
        self._stopping = threading.Event()
        self._interval = max(0.2, limiter.lease_s / 3)

    def run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self._limiter.renew_held()
            except redis.RedisError as exc:  # try again next round; a lease outlives two misses
                logger.warning("tenant_slot_renewal_failed", error=type(exc).__name__)

    def stop(self) -> None:
        self._stopping.set()


def scope_of(limit: str, tenant_id: str, key_id: str | None, key_limits: Iterable[str]) -> str:
    """The scope a limit is counted in: the key's own when the key sets it, else its tenant's."""
    if key_id is not None and limit in set(key_limits):
        return f"key:{key_id}"
    return f"tenant:{tenant_id}"
