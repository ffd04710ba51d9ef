"""Every Redis key and channel prefix llmq uses, in one place. The values are what is in Redis:
changing one orphans the keys already written under it.

::

    RATELIMIT_PREFIX  llmq:rl            rate limits (workers/ratelimit.py):
                                         llmq:rl:<model>:log, :tok, :sum, :slots, :line, :due, :want
    BUDGET_PREFIX     llmq:budget        budgets (workers/budgets.py), per scope and period start:
                                         llmq:budget:<scope>:<YYYYMMDD>:acct, :res, :exp
    TENANT_LIMIT_PREFIX llmq:tl          tenant and key limits (workers/tenantlimit.py), per scope
                                         (tenant:<id> | key:<id>): :req:log|tok|sum (rpm at
                                         submit), :tok:log|tok|sum (tpm), :slots, :line, :due, :want
    AUTH_EPOCH_KEY    llmq:auth:epoch    bumped on every key or tenant change (api/auth.py): each
                                         API process drops its cached keys when it moves
    BREAKER_PREFIX    llmq:cb            circuit breakers (workers/breaker.py):
                                         llmq:cb:<model>:state, :calls, :fails, :probe
    CACHE_PREFIX      llmq:cache         cached answers (workers/cache.py): llmq:cache:v1:<sha256>
    PROGRESS_KEY      llmq:progress:{}   a streamed call's progress (workers/progress.py),
                                         formatted with the job id: llmq:progress:<job id>
    CANCEL_CHANNEL    llmq:cancel        pub/sub channel of job cancels (tasks/inflight.py)
    SWEEP_LOCK        llmq:sweep-lock    the lock that keeps to one sweep at a time (tasks/sweep.py)
    PROVIDER_BATCH_LOCK  llmq:provider-batch-lock   one provider-batch run at a time
                                         (tasks/provider_batches.py)
    BATCH_TICK_LOCK   llmq:batch-tick-lock  one batch tick at a time (tasks/batches.py)
    PROVIDER_BATCH_HOLDS llmq:pb-holds   the budget holds of a provider batch's lines
                                         (tasks/provider_batch_budgets.py): llmq:pb-holds:<batch id>

The broker's keys (the ``llm`` and ``webhooks`` queue lists, kombu's bindings and unacked sets)
are Celery's and not listed here. The rate limiter, the breakers and the budget ledger take a
``prefix`` argument whose default is theirs above.
"""

from __future__ import annotations

__all__ = [
    "AUTH_EPOCH_KEY",
    "BATCH_TICK_LOCK",
    "BREAKER_PREFIX",
    "BUDGET_PREFIX",
    "CACHE_PREFIX",
    "CANCEL_CHANNEL",
    "PROGRESS_KEY",
    "PROVIDER_BATCH_HOLDS",
    "PROVIDER_BATCH_LOCK",
    "RATELIMIT_PREFIX",
    "SWEEP_LOCK",
    "TENANT_LIMIT_PREFIX",
]

RATELIMIT_PREFIX = "llmq:rl"
BREAKER_PREFIX = "llmq:cb"
BUDGET_PREFIX = "llmq:budget"
CACHE_PREFIX = "llmq:cache"
PROGRESS_KEY = "llmq:progress:{}"  # .format(job_id)
CANCEL_CHANNEL = "llmq:cancel"
SWEEP_LOCK = "llmq:sweep-lock"
PROVIDER_BATCH_LOCK = "llmq:provider-batch-lock"
BATCH_TICK_LOCK = "llmq:batch-tick-lock"
PROVIDER_BATCH_HOLDS = "llmq:pb-holds"
TENANT_LIMIT_PREFIX = "llmq:tl"
AUTH_EPOCH_KEY = "llmq:auth:epoch"
