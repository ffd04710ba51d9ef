"""The Lua scripts llmq runs in Redis, kept as files in ``llmq/workers/lua/`` (dramatiq's way).

A script is read once, when the module that runs it is imported, and registered with
``redis.Redis.register_script`` by the object that uses it (:class:`~llmq.workers.ratelimit.
RateLimiter`, :class:`~llmq.workers.breaker.CircuitBreakers`), as before. Some scripts share a
prologue (the Redis clock, the eviction of a window): :func:`load_lua` joins the files it is given
in order, the prologue first, so each prologue is written once. The files are package data
(``setup.cfg``), so an installed llmq has them.
"""

from __future__ import annotations

from importlib.resources import files

__all__ = ["load_lua"]


def load_lua(*names: str) -> str:
    """The text of ``llmq/workers/lua/<name>.lua`` for each name, joined in order."""
    folder = files("llmq.workers") / "lua"
    return "".join((folder / f"{name}.lua").read_text(encoding="utf-8") for name in names)
