"""The one way llmq builds a ``redis.Redis``: from the parsed ``REDIS_URL``
(:class:`~llmq.config.redis_url.RedisTarget`), for a single server or for the master of a
Sentinel set, with or without TLS. The worker runtime (limiter, breakers, cache, progress, the
sweeper's lock), the cancel listener and the API all call :func:`redis_client`; Celery's broker is
configured from the same target (``RedisTarget.celery_broker``).

Behind Sentinel the client follows the master: redis-py's ``SentinelConnectionPool`` asks the
Sentinels where the master is each time it opens a connection, drops idle connections to a former
master, and turns a ``READONLY`` answer from a demoted master into a ``ConnectionError``. The
retry policy below (redis-py's own default for a single server, which ``master_for`` would not
give) makes a command that hits a failover reconnect to the new master and run again, and a
command that still cannot run raises ``redis.ConnectionError``, which every caller already treats
as "Redis unavailable" (the gate parks the job). Lua scripts are called through redis-py's
``Script`` objects, which load a script again when a newly promoted master answers ``NOSCRIPT``.
"""

from __future__ import annotations

from typing import cast

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from llmq.config.redis_url import RedisTarget


def command_retry() -> Retry:
    """Three more tries after random waits of up to 2, 4 and 8 s: redis-py's default for
    ``redis.Redis``, long enough to span a Sentinel failover of a few seconds."""
    return Retry(ExponentialWithJitterBackoff(base=1, cap=10), 3)


def redis_client(
    target: RedisTarget, *, socket_timeout: float = 5, socket_connect_timeout: float = 2
) -> redis.Redis:
    """A client of the server ``target`` names, or of its Sentinel set's current master."""
    kwargs = {
        **target.node_kwargs(),
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "retry": command_retry(),
    }
    if not target.is_sentinel:
        return redis.Redis(host=target.host, port=target.port, **kwargs)
    sentinel_kwargs = target.sentinel_kwargs(socket_timeout, socket_connect_timeout)
    sentinels = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    assert target.master is not None  # parse_redis_url refuses a Sentinel URL without one
    return cast(redis.Redis, sentinels.master_for(target.master, **kwargs))  # type: ignore[no-untyped-call]
