"""The Lua scripts llmq runs in Redis, kept as ``.lua`` files in this folder (dramatiq's way).

A script is read once, when the module that runs it is imported (``workers/ratelimit.py``,
``workers/breaker.py``, ``workers/budgets.py``), and registered with
``redis.Redis.register_script`` by the object that uses it (``RateLimiter``, ``CircuitBreakers``,
``BudgetLedger``). Scripts that share a prologue (the Redis clock, the
eviction of a window) are composed here, in Python: :func:`load_lua` joins the files it is given
in order, the prologue first, so each prologue is written once::

    ratelimit_prologue        + ratelimit_settle | _cancel | _usage
    ratelimit_prologue        + ratelimit_line + ratelimit_acquire
    ratelimit_slots_prologue  + ratelimit_renew_slots | _release_slot
    ratelimit_line            + ratelimit_leave_line | _line_order

``ratelimit_line`` holds the functions of the fair line (join, rank, remove, lapse), shared by the
scripts that touch it.
    breaker_prologue          + breaker_check | _record | _snapshot
    budget_prologue           + budget_reserve | _settle | _seed | _balance

Each file names its ``KEYS`` and ``ARGV``. The files are package data (``setup.cfg``), so an
installed llmq has them.
"""

from __future__ import annotations

from importlib.resources import files

__all__ = ["load_lua"]


def load_lua(*names: str) -> str:
    """The text of ``llmq/workers/lua/<name>.lua`` for each name, joined in order."""
    folder = files(__name__)
    return "".join((folder / f"{name}.lua").read_text(encoding="utf-8") for name in names)
