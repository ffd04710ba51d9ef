"""Fleet-wide rate limits per provider/model, shared by every worker process and host through Redis:
requests per window (``rpm``), tokens per window (``tpm``) and calls in flight (``concurrency``).

Every check-and-change is one Lua script, so two workers can never both take the last unit of
capacity, and every script reads the clock of the Redis server (``TIME``), never the client's, so
hosts with skewed clocks agree on what the window holds.

Requests and tokens — one sliding log, checked together::

    llmq:rl:<model>:log    ZSET  reservation id → admission time (µs, Redis clock)
    llmq:rl:<model>:tok    HASH  reservation id → tokens reserved (then the tokens actually used)
    llmq:rl:<model>:sum    STR   sum of :tok over the entries still in the window

    acquire(model, tokens)  evict entries older than window_s (subtracting their tokens), then
                            admit only if  len(log) < rpm  AND  sum + tokens <= tpm,
                            else answer when enough entries will have left the window.

The window is exact, not a pair of fixed buckets: an admission at time t is refused while ``rpm``
admissions lie in (t - window_s, t], so no interval of ``window_s`` seconds ever holds more than
``rpm`` admissions, whichever workers made them. A refused :class:`Admission` carries
``retry_in_s``, the exact moment the entry blocking it leaves the window (for rpm: the oldest
entry that must go), so a waiting job can be parked until then instead of polling.

Tokens (TPM): a call reserves, before it is made, its estimated prompt tokens plus its
``max_tokens`` (or the default max tokens when the job gives none) — :func:`estimate_tokens`.
Output is reserved up front because providers count it against TPM too, and because an
under-reservation is what turns into the provider's 429; after the call, :meth:`settle` replaces
the reservation with the total tokens the provider reported, usually freeing most of the output
reservation at once. A reservation larger than the whole ``tpm`` is cut to ``tpm`` (admitted when
the window holds no tokens at all), so that it can ever run. A call that was never sent can give
its request and tokens back with :meth:`cancel`.

Calls in flight — a distributed semaphore with leases::

    llmq:rl:<model>:slots  ZSET  holder → lease expiry (µs, Redis clock)

    acquire_slot(model, holder, lease_s)  evict expired holders, then take a slot if < concurrency
    renew_slot(model, holders, lease_s)   push the expiry of live holders; report the lost ones
    release_slot(model, holder)

A worker renews its holders' leases while their calls run (every ``lease_s / 3`` or so); one that
dies stops renewing, and its slot is free again ``lease_s`` later at most. Renewing a lease that
has already expired does not bring it back (that could exceed the cap): the holder is reported
lost instead.

Every key has a TTL (the window, or the longest lease) renewed on writes, so the keys of an idle
model vanish. A model with no ``rpm``/``tpm`` (or no ``concurrency``) in the providers file is not
limited on that axis and costs no Redis round trip.

What counts is the Redis clock at admission: the provider counts by its own clock when the request
reaches it. Set limits a little under the account's (see ``providers.default.toml``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from llmq.workers.pricing import ProvidersConfig

__all__ = [
    "Admission",
    "ModelLimits",
    "RateLimiter",
    "content_text",
    "estimate_input_tokens",
    "estimate_tokens",
]

KEY_PREFIX = "llmq:rl"
_US = 1_000_000
_KEY_TTL_MARGIN_MS = 1000
# A prompt's share of tokens per message beyond its text (role, separators), and of the reply's
# priming, as OpenAI documents for its chat format; close enough for Anthropic.
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_REPLY = 3
_BYTES_PER_TOKEN = 4


# --- estimates ---------------------------------------------------------------------------------


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or OpenAI-style content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):  # content parts: [{"type": "text", "text": "..."}, ...]
        parts = []
        for part in content:
            if isinstance(part, Mapping):
                parts.append(str(part.get("text") or ""))
            else:
                parts.append(str(part))
        return "".join(parts)
    return str(content)


def estimate_input_tokens(messages: Iterable[Any]) -> int:
    """Prompt tokens of ``messages`` (mappings or objects with ``role``/``content``), estimated
    without a tokenizer: UTF-8 bytes / 4 per message, plus the chat format's overhead.

    Bytes rather than characters: the same as chars/4 for English text, and less of an
    underestimate for scripts that take more tokens per character (CJK, Cyrillic)."""
    total = _TOKENS_PER_REPLY
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else getattr(message, "content", "")
        size = len(content_text(content).encode("utf-8"))
        total += _TOKENS_PER_MESSAGE + math.ceil(size / _BYTES_PER_TOKEN)
    return total


def estimate_tokens(
    messages: Iterable[Any], max_tokens: int | None, *, default_max_tokens: int = 1024
) -> int:
    """The TPM reservation of a call: estimated prompt tokens plus the most it may generate
    (``max_tokens``, or ``default_max_tokens`` when the job gives none)."""
    output = max_tokens if max_tokens is not None else default_max_tokens
    return estimate_input_tokens(messages) + max(0, output)


# --- scripts -----------------------------------------------------------------------------------

# Common prologue: the Redis clock in µs, and eviction of the log entries that left the window
# (score <= now - window), subtracting their tokens from the sum. KEYS: log, tok, sum.
_EVICT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cutoff = now - tonumber(ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
if #old > 0 then
  local freed = 0
  for i = 1, #old, 500 do
    local chunk = {}
    for j = i, math.min(i + 499, #old) do chunk[#chunk + 1] = old[j] end
    local values = redis.call('HMGET', KEYS[2], unpack(chunk))
    for k = 1, #values do
      if values[k] then freed = freed + tonumber(values[k]) end
    end
    redis.call('HDEL', KEYS[2], unpack(chunk))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  redis.call('DECRBY', KEYS[3], freed)
end
local count = redis.call('ZCARD', KEYS[1])
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
if count == 0 then
  -- self-healing: an empty window holds no tokens
  used = 0
  redis.call('DEL', KEYS[3], KEYS[2])
elseif used < 0 then
  used = 0
  redis.call('SET', KEYS[3], 0, 'KEEPTTL')
end
"""

# ARGV: window_us, rpm (0: none), tpm (0: none), tokens, member, key_ttl_ms
# → {1, now_us, count, used} when admitted, {0, wait_us, count, used} when not.
_ACQUIRE = (
    _EVICT
    + """
local window = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
if tpm > 0 and tokens > tpm then tokens = tpm end
local wait = 0
if rpm > 0 and count >= rpm then
  -- (count - rpm + 1) entries must leave; the last of them is at rank count - rpm.
  local entry = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
  wait = tonumber(entry[2]) + window - now
end
if tpm > 0 and used + tokens > tpm then
  local excess = used + tokens - tpm
  local freed = 0
  local rank = 0
  local found = false
  while not found do
    local batch = redis.call('ZRANGE', KEYS[1], rank, rank + 199, 'WITHSCORES')
    if #batch == 0 then break end
    for k = 1, #batch, 2 do
      freed = freed + tonumber(redis.call('HGET', KEYS[2], batch[k]) or '0')
      if freed >= excess then
        local w = tonumber(batch[k + 1]) + window - now
        if w > wait then wait = w end
        found = true
        break
      end
    end
    rank = rank + 200
  end
  if not found and window > wait then wait = window end
end
if wait > 0 then
  return {0, wait, count, used}
end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('HSET', KEYS[2], ARGV[5], tokens)
redis.call('INCRBY', KEYS[3], tokens)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[6]) end
return {1, now, count + 1, used + tokens}
"""
)

# ARGV: window_us, member, actual_tokens, key_ttl_ms → tokens added (negative: freed), or false
# when the entry already left the window (nothing to correct).
_SETTLE = (
    _EVICT
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return false end
local before = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local after = tonumber(ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], after)
redis.call('INCRBY', KEYS[3], after - before)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return after - before
"""
)

# ARGV: window_us, member → 1 when the entry was in the window and is gone now, else 0.
_CANCEL = (
    _EVICT
    + """
if redis.call('ZREM', KEYS[1], ARGV[2]) == 0 then return 0 end
local tokens = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('DECRBY', KEYS[3], tokens)
return 1
"""
)

# Slots. KEYS: slots. Prologue: the clock, eviction of expired holders (expiry <= now), and a
# helper that sets the key's TTL to cover its longest lease.
_SLOTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local function keep_key()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if #last > 0 then
    redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(last[2]) - now) / 1000) + 1000)
  end
end
"""

# ARGV: cap, holder, lease_us → 1 taken (or already held: lease renewed), 0 refused.
_ACQUIRE_SLOT = (
    _SLOTS
    + """
local expiry = now + tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[2]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], expiry, ARGV[2])
  keep_key()
  return 1
end
return 0
"""
)

# ARGV: lease_us, holder... → the holders that no longer held a slot (lease expired or released).
_RENEW_SLOTS = (
    _SLOTS
    + """
local expiry = now + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
keep_key()
return lost
"""
)

# ARGV: holder → 1 released, 0 not held.
_RELEASE_SLOT = (
    _SLOTS
    + """
return redis.call('ZREM', KEYS[1], ARGV[1])
"""
)

# KEYS: log, tok, sum, slots. ARGV: window_us → {count, used, in_flight}.
_USAGE = (
    _EVICT
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
return {count, used, redis.call('ZCARD', KEYS[4])}
"""
)


# --- API ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """The answer of :meth:`RateLimiter.acquire`.

    ``allowed``: the call may go now; its request and tokens are counted under ``reservation``
    (pass it to :meth:`RateLimiter.settle` after the call). ``retry_in_s``: when not allowed, the
    seconds until enough entries leave the window for this call to fit (0 when allowed).
    ``admitted_at``: the Redis clock (unix seconds) at admission, for logs and tests."""

    allowed: bool
    retry_in_s: float
    reservation: str | None
    admitted_at: float | None = None


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
        prefix: str = KEY_PREFIX,
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
        self._acquire = client.register_script(_ACQUIRE)
        self._settle = client.register_script(_SETTLE)
        self._cancel = client.register_script(_CANCEL)
        self._acquire_slot = client.register_script(_ACQUIRE_SLOT)
        self._renew_slots = client.register_script(_RENEW_SLOTS)
        self._release_slot = client.register_script(_RELEASE_SLOT)
        self._usage = client.register_script(_USAGE)

    # --- keys and limits ---

    def _keys(self, model: str) -> list[str]:
        base = f"{self._prefix}:{model}"
        return [f"{base}:log", f"{base}:tok", f"{base}:sum"]

    def _slots_key(self, model: str) -> str:
        return f"{self._prefix}:{model}:slots"

    def limits(self, model: str) -> ModelLimits:
        cfg = self._config.model(model)
        if cfg is None:
            return ModelLimits()
        return ModelLimits(rpm=cfg.rpm, tpm=cfg.tpm, concurrency=cfg.concurrency)

    # --- requests and tokens ---

    def acquire(self, model: str, tokens_estimate: int) -> Admission:
        """Count one request of ``tokens_estimate`` tokens against ``model``'s rpm and tpm, if
        both have room; else say when to try again. Unlimited models are always admitted, with no
        reservation."""
        limits = self.limits(model)
        if limits.rpm is None and limits.tpm is None:
            return Admission(allowed=True, retry_in_s=0.0, reservation=None)
        member = uuid.uuid4().hex
        result = self._acquire(
            keys=self._keys(model),
            args=[
                self._window_us,
                limits.rpm or 0,
                limits.tpm or 0,
                max(0, int(tokens_estimate)),
                member,
                self._key_ttl_ms,
            ],
        )
        ok, value = int(result[0]), int(result[1])
        if ok:
            return Admission(True, 0.0, f"{model}#{member}", admitted_at=value / _US)
        return Admission(False, value / _US, None)

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

    def acquire_slot(self, model: str, holder: str, lease_s: float | None = None) -> bool:
        """Take one of ``model``'s concurrency slots for ``holder`` (a job's lease token, say)
        for ``lease_s`` (default ``[limits] lease_s``). True when taken — or already held by
        ``holder``, whose lease is then renewed. Always True for a model with no cap."""
        cap = self.limits(model).concurrency
        if cap is None:
            return True
        return bool(
            self._acquire_slot(keys=[self._slots_key(model)], args=[cap, holder, self._lease_us(lease_s)])
        )

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
         "concurrency_limit", "in_flight"}   (limits are None when not set)
        """
        limits = self.limits(model)
        count, used, in_flight = (
            int(v)
            for v in self._usage(
                keys=[*self._keys(model), self._slots_key(model)],
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
