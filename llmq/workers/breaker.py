"""Circuit breakers, one per provider/model, with their state in Redis so that every worker process
and host sees the same breaker.

::

              failures consecutive transient failures,
              or failure_ratio of >= min_calls calls over window_s
      ┌────────┐ ─────────────────────────────────────────▶ ┌──────┐
      │ closed │                                            │ open │ refuses every call
      └────────┘ ◀──── probe succeeds ────┐                 └──────┘
           ▲                              │                    │ cooldown_s passed
           │                       ┌───────────┐               │
           └─ (reset counts)       │ half_open │ ◀─────────────┘
                                   └───────────┘
                                   exactly ONE caller gets probe=True (SET NX, lease
                                   probe_timeout_s); the others are refused until it reports.
                                   probe fails → open for another cooldown_s

Use: ``check(model)`` before a call; if ``allowed``, make it and then ``record(model, success,
probe=decision.probe)``. A refused decision says why (``state``) and for how long
(``retry_in_s``): the job goes to its fallback, or parks that long.

What counts as a failure is the caller's decision, and it must be a *transient* provider failure
only (:class:`~llmq.workers.providers.errors.TransientError`: 429, 5xx, 529, timeouts, dropped
connections and streams). A permanent error (400, 401, 404, content policy, context length) means
the provider answered and is healthy: record it as a success, or a probe that met one would hold
the breaker half-open until its lease ran out. A call that was interrupted before it learned
anything (the job was cancelled, the worker shuts down) is not recorded; if it was the probe,
:meth:`CircuitBreakers.abandon_probe` lets another caller probe at once.

Results that arrive while the breaker is open (calls let through before it opened) are ignored:
they neither extend the cooldown nor close it.

State in Redis (all changes in Lua scripts, ``llmq/workers/lua/breaker_*.lua``, on the Redis clock)::

    llmq:cb:<model>:state  HASH  state ("open" or absent), opened_at, open_until (µs), consecutive
    llmq:cb:<model>:calls  ZSET  call id → time (µs), the rolling window of calls
    llmq:cb:<model>:fails  ZSET  call id → time (µs), the failed ones among them
    llmq:cb:<model>:probe  STR   the probe's token, SET NX with a TTL of probe_timeout_s

The ``llmq:cb`` prefix is ``BREAKER_PREFIX`` in ``workers/keys.py``. The window keys expire with
the window; the state hash after a day without a result (an open breaker left without traffic
that long is closed again, and the next failures open it anew).

Why not pybreaker: its ``CircuitRedisStorage`` keeps state, counter and ``opened_at`` in separate
keys changed by separate commands (GET, then SET), so the open → half-open move is not atomic:
every process that sees the cooldown over sets ``half-open`` and calls through, and there is no
single probe across processes. It counts consecutive failures only (no failure ratio over a
window, no minimum number of calls), stores ``opened_at`` in whole seconds of each client's clock,
and works by wrapping the call under a process-wide lock (``CircuitBreaker.call``), where llmq
needs a check before and a record after a call that runs elsewhere (an event loop, a parked job).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import redis

from llmq.config.providers_file import BreakerConfig, ProvidersConfig
from llmq.workers.keys import BREAKER_PREFIX
from llmq.workers.lua import load_lua

__all__ = ["BreakerDecision", "CircuitBreakers"]

_US = 1_000_000
_STATE_TTL_MS = 86_400_000
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

# llmq/workers/lua/: each script starts with breaker_prologue (the Redis clock in µs); each file
# says its KEYS and ARGV.
_CHECK = load_lua("breaker_prologue", "breaker_check")
_RECORD = load_lua("breaker_prologue", "breaker_record")
_SNAPSHOT = load_lua("breaker_prologue", "breaker_snapshot")


@dataclass(frozen=True)
class BreakerDecision:
    """The answer of :meth:`CircuitBreakers.check`.

    ``allowed``: the call may go. ``state``: ``closed``, ``open`` or ``half_open``.
    ``retry_in_s``: when refused, how long until the breaker may let a call through: the rest of
    the cooldown, or (a probe is out) the rest of its lease, at most ``cooldown_s``.
    ``probe``: this call is the half-open probe; report its result with ``record(..., probe=True)``."""

    allowed: bool
    state: str
    retry_in_s: float
    probe: bool


class CircuitBreakers:
    """The breakers of every model, configured by the providers file (``[breaker]`` and each
    model's ``breaker`` overrides), kept in ``client``'s Redis."""

    def __init__(self, client: redis.Redis, config: ProvidersConfig, *, prefix: str = BREAKER_PREFIX) -> None:
        self._redis = client
        self._config = config
        self._prefix = prefix
        self._check = client.register_script(_CHECK)
        self._record = client.register_script(_RECORD)
        self._snapshot = client.register_script(_SNAPSHOT)

    def settings(self, model: str) -> BreakerConfig:
        return self._config.breaker_for(model)

    def _keys(self, model: str) -> list[str]:
        base = f"{self._prefix}:{model}"
        return [f"{base}:state", f"{base}:calls", f"{base}:fails", f"{base}:probe"]

    def check(self, model: str) -> BreakerDecision:
        """May a call to ``model`` go now? In half-open state exactly one caller is told yes
        (``probe=True``) until that probe reports or its lease (``probe_timeout_s``) runs out."""
        cfg = self.settings(model)
        keys = self._keys(model)
        allowed, state, retry_us, probe = self._check(
            keys=[keys[0], keys[3]],
            args=[int(cfg.probe_timeout_s * 1000), uuid.uuid4().hex],
        )
        state = _text(state)
        return BreakerDecision(
            allowed=bool(int(allowed)),
            state=state,
            retry_in_s=_retry_in_s(state, int(retry_us), cfg),
            probe=bool(int(probe)),
        )

    def record(self, model: str, success: bool, probe: bool = False) -> str:
        """Report the result of a call that :meth:`check` allowed: ``success=False`` only for a
        transient provider failure (see the module docstring). ``probe`` as the decision said.
        Returns the breaker's state afterwards (``closed`` or ``open``)."""
        cfg = self.settings(model)
        state = self._record(
            keys=self._keys(model),
            args=[
                1 if success else 0,
                1 if probe else 0,
                uuid.uuid4().hex,
                cfg.failures,
                cfg.failure_ratio,
                int(cfg.window_s * _US),
                cfg.min_calls,
                int(cfg.cooldown_s * _US),
                _STATE_TTL_MS,
            ],
        )
        return _text(state)

    def abandon_probe(self, model: str) -> None:
        """The probe call was given up before it learned anything (job cancelled, shutdown): let
        the next caller probe at once instead of waiting out the probe's lease."""
        self._redis.delete(self._keys(model)[3])

    def reset(self, model: str) -> None:
        """Close ``model``'s breaker and forget its counts (an operator's override)."""
        self._redis.delete(*self._keys(model))

    def snapshot(self, model: str) -> dict[str, Any]:
        """The breaker as ``GET /v1/providers`` shows it::

        {"state", "consecutive_failures", "calls", "failures", "error_rate",
         "opened_at" (unix seconds or None), "retry_in_s"}

        ``calls``/``failures``/``error_rate`` cover the rolling window (while open: the calls
        that opened it, ageing out); all counts start afresh when the breaker closes."""
        cfg = self.settings(model)
        state, consecutive, calls, fails, opened_at_us, retry_us = self._snapshot(
            keys=self._keys(model), args=[int(cfg.window_s * _US)]
        )
        calls, fails = int(calls), int(fails)
        opened = int(opened_at_us or 0)
        return {
            "state": _text(state),
            "consecutive_failures": int(consecutive),
            "calls": calls,
            "failures": fails,
            "error_rate": round(fails / calls, 4) if calls else 0.0,
            "opened_at": opened / _US if opened else None,
            "retry_in_s": _retry_in_s(_text(state), int(retry_us), cfg),
        }


def _retry_in_s(state: str, retry_us: int, cfg: BreakerConfig) -> float:
    # Half-open with the probe out: the probe's lease may be long (a slow call), but its result
    # usually comes sooner, so a refused caller is told to look again after a cooldown at most.
    seconds = retry_us / _US
    return min(seconds, cfg.cooldown_s) if state == HALF_OPEN else seconds


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
