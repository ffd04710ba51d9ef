"""redis-py types every command as "a value, or an awaitable of it" (one client class serves both
the sync and the asyncio APIs); the tests use the sync client, so this says which one it is."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar, cast

T = TypeVar("T")


def done(value: Awaitable[T] | T) -> T:
    """The value a sync redis client's command returned."""
    assert not isinstance(value, Awaitable), "a sync client's command returned an awaitable"
    return cast(T, value)
