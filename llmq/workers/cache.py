"""Exact-match response cache: the same request (model, messages, parameters — and tenant, unless
the cache is shared across tenants) gets the same answer without calling the provider.

Two layers::

    get(key) ──▶ in-process LRU (bounded, per worker process) ──miss──▶ Redis (TTL) ──miss──▶ None
                                        ▲                                  │ hit
                                        └──────── kept, until the same ────┘
                                                  moment Redis forgets it
    put(key, answer, ttl_s) ──▶ both layers

The key is a SHA-256 over a normalised request (:func:`cache_key`): sorted-key JSON of the model,
the messages (role, content, and name when given) and the parameters that shape the answer, with
``None`` values dropped and whole floats written as integers (``temperature=0`` and ``0.0`` are
one key). Content parts, tool calls and tool results are part of a message; the request options
(tools, response_format, stop, seed, top_p, n) are part of the parameters. Callers pass the
*effective* parameters, after defaults were applied, so that a job that leaves ``max_tokens``
unset and one that sets it to the default share an entry. The tenant id is part of the hashed
request: another tenant's answer is never found unless the caller passes ``tenant_id=None``
(``[cache] shared_across_tenants``; :meth:`ResponseCache.key` does so).

Answers are stored as JSON (:class:`CachedAnswer`), never pickled. A cache is an optimisation:
a Redis error or an unreadable entry is logged and treated as a miss (``get``) or skipped
(``put``), never raised into a job.

The in-process layer is a small hand-written LRU (an ``OrderedDict`` under a lock, each entry
with its own deadline) rather than ``cachetools``: the job needs per-entry expiry tied to the
Redis TTL and thread safety, which ``cachetools`` leaves to the caller (``TLRUCache`` plus a
lock), so the dependency would not make this shorter.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

import redis
import structlog

from llmq.config.providers_file import CacheConfig
from llmq.workers.keys import CACHE_PREFIX

__all__ = ["CachedAnswer", "ResponseCache", "cache_key"]

logger = structlog.get_logger(__name__)

_KEY_VERSION = "v1"  # bump when the normalised form changes: old entries then simply miss


@dataclass(frozen=True)
class CachedAnswer:
    """What a cache hit completes a job with."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    served_by: str
    extra: dict[str, Any] | None = None  # tool calls, the choices of n > 1 (CallResult.extra)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> CachedAnswer:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a cached answer must be a JSON object")
        answer = cls(
            text=data["text"],
            finish_reason=data["finish_reason"],
            prompt_tokens=data["prompt_tokens"],
            completion_tokens=data["completion_tokens"],
            served_by=data["served_by"],
            extra=data.get("extra"),
        )
        if not isinstance(answer.text, str) or not isinstance(answer.served_by, str):
            raise ValueError("text and served_by must be strings")
        if not isinstance(answer.prompt_tokens, int) or not isinstance(answer.completion_tokens, int):
            raise ValueError("token counts must be integers")
        if answer.extra is not None and not isinstance(answer.extra, dict):
            raise ValueError("extra must be an object")
        return answer


# --- keys --------------------------------------------------------------------------------------


def _normal(value: Any) -> Any:
    """JSON-ready, with one spelling per value: whole floats as ints, Decimals as numbers,
    ``None`` entries of mappings dropped, tuples as lists."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        return {str(k): _normal(v) for k, v in value.items() if v is not None}
    if isinstance(value, Iterable):
        return [_normal(v) for v in value]
    raise TypeError(f"cannot key a cache on a {type(value).__name__}")


# What of a message shapes the answer: its text or content parts, and the tool turns.
_MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


def _message(message: Any) -> dict[str, Any]:
    if isinstance(message, Mapping):
        fields = {k: message.get(k) for k in _MESSAGE_KEYS}
    else:
        fields = {k: getattr(message, k, None) for k in _MESSAGE_KEYS}
    return {k: _normal(v) for k, v in fields.items() if v is not None}


def cache_key(
    model: str,
    messages: Iterable[Any],
    params: Mapping[str, Any],
    tenant_id: str | None,
) -> str:
    """The cache key of a request: ``llmq:cache:v1:<sha256 hex>``.

    ``messages``: mappings or objects with ``role``, ``content`` (and optional ``name``);
    ``params``: what else shapes the answer (``max_tokens``, ``temperature``, ``top_p``,
    ``stop``, …; ``None`` values are ignored); ``tenant_id``: the tenant, or None for a key shared
    by all tenants. Whitespace and letter case in the messages are kept: they change answers."""
    request = {
        "model": model,
        "messages": [_message(m) for m in messages],
        "params": _normal(dict(params)),
        "tenant": tenant_id,
    }
    blob = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return f"{CACHE_PREFIX}:{_KEY_VERSION}:{hashlib.sha256(blob.encode('utf-8')).hexdigest()}"


# --- the two layers ----------------------------------------------------------------------------


class _LRU:
    """A bounded, thread-safe LRU whose entries also expire (monotonic deadlines)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[float, CachedAnswer]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedAnswer | None:
        if self.size <= 0:
            return None
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            deadline, answer = item
            if deadline <= time.monotonic():
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return answer

    def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        if self.size <= 0 or ttl_s <= 0:
            return
        with self._lock:
            self._items[key] = (time.monotonic() + ttl_s, answer)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def discard(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class ResponseCache:
    """The response cache of one process: its LRU in front of ``client``'s Redis."""

    def __init__(self, client: redis.Redis, config: CacheConfig) -> None:
        self._redis = client
        self.config = config
        self._local = _LRU(config.lru_size)

    def key(
        self, model: str, messages: Iterable[Any], params: Mapping[str, Any], tenant_id: str | None
    ) -> str:
        """:func:`cache_key`, shared across tenants when ``[cache] shared_across_tenants``."""
        return cache_key(model, messages, params, None if self.config.shared_across_tenants else tenant_id)

    def wanted(self, asked: bool | None, temperature: float | None) -> bool:
        """Does a job use the cache: what it asked (``cache: true|false``), else — it said
        nothing — whether its temperature is 0 and ``[cache] temperature_zero`` is on."""
        if asked is not None:
            return asked
        return self.config.temperature_zero and temperature is not None and temperature == 0

    def get(self, key: str) -> CachedAnswer | None:
        answer = self._local.get(key)
        if answer is not None:
            return answer
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                raw, pttl = pipe.execute()
        except redis.RedisError as exc:
            logger.warning("cache_unavailable", op="get", error=type(exc).__name__)
            return None
        if raw is None:
            return None
        try:
            answer = CachedAnswer.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("cache_entry_unreadable", error=type(exc).__name__)
            self._delete(key)
            return None
        if isinstance(pttl, int) and pttl > 0:
            self._local.put(key, answer, pttl / 1000)
        return answer

    def put(self, key: str, answer: CachedAnswer, ttl_s: float | None = None) -> None:
        """Store ``answer`` under ``key`` for ``ttl_s`` seconds (default ``[cache] ttl_s``)."""
        ttl = float(self.config.ttl_s if ttl_s is None else ttl_s)
        if ttl <= 0:
            return
        try:
            self._redis.set(key, answer.to_json(), px=max(1, int(ttl * 1000)))
        except redis.RedisError as exc:
            logger.warning("cache_unavailable", op="put", error=type(exc).__name__)
            return
        self._local.put(key, answer, ttl)

    def _delete(self, key: str) -> None:
        self._local.discard(key)
        try:
            self._redis.delete(key)
        except redis.RedisError:
            pass
