"""One Redis client per kombu channel instead of one per broker operation.

kombu's Redis transport builds a new ``redis.Redis`` object for every publish and every ack
(``Channel.conn_or_acquire`` → ``_create_client``). The object is only a front for the channel's
connection pool, but its constructor copies redis-py's table of ~200 response callbacks: measured
with py-spy under load, that was 4 % of the API's CPU and 4 % of an LLM worker's. A client bound to
a pool is thread-safe (each command checks a connection out of the pool), so one per channel is
enough; it is built again when kombu replaces the channel's pool after a connection error.

Only the synchronous client is kept: the asynchronous one (BRPOP, pub/sub) kombu already builds
once per channel.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

_build_client = kombu_redis.Channel._create_client


def _create_client(self: Any, asynchronous: bool = False) -> Any:
    if asynchronous:
        return _build_client(self, asynchronous=True)
    client = self.__dict__.get("_llmq_client")
    try:
        pool = self.pool
    except AttributeError:
        # The channel is being closed after its connection died (a Redis or Sentinel failover):
        # kombu can no longer build a pool (its connection info is gone) but still gives the
        # unacked messages back through a client. The one it had still reaches Redis (a
        # Sentinel-managed pool finds the new master); without one, kombu's own error stands.
        if client is None:
            raise
        return client
    if client is None or client.connection_pool is not pool:
        client = self.__dict__["_llmq_client"] = _build_client(self)
    return client


def keep_one_client_per_channel() -> None:
    """Install the cached client on kombu's Redis channel (idempotent)."""
    kombu_redis.Channel._create_client = _create_client  # type: ignore[method-assign]
