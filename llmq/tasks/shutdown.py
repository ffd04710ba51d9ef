"""How long a worker's warm shutdown (SIGTERM) can take, from the settings.

Whatever stops a worker — a deploy, a scale-down, a node drain — should wait at least this long
before it sends SIGKILL: Kubernetes' ``terminationGracePeriodSeconds`` (deploy/k8s) and compose's
``stop_grace_period`` are checked against it by the tests. A SIGKILL sooner is still safe (the
jobs' leases and the webhook events' claims run out and the sweeper hands them to another
worker), but each job it cuts off then waits up to ``lease_s`` instead of going back at once.
"""

from __future__ import annotations

from llmq.config.settings import Settings
from llmq.tasks.app import LLM_QUEUE, WEBHOOK_QUEUE, celery_config


def broker_round_trip_bound_s(settings: Settings) -> float:
    """The longest one broker operation can block: the Redis transport's socket timeout."""
    options = celery_config(settings)["broker_transport_options"]
    return float(options["socket_timeout"])


def warm_shutdown_s(settings: Settings, queues: str) -> float:
    """The worst case, in seconds, of a warm shutdown of ``llmq worker --queues <queues>``.

    1. (``llm``) ``shutdown_calls``: every call is cancelled at once; the worker waits at most
       ``worker_shutdown_wait_s`` for the finishers to hand each job back (one UPDATE and one
       publish each) and for the first webhook attempts under way to end.
    2. Celery's warm shutdown then waits for the tasks its pool threads are running: on ``llm``
       a claim-and-start (a transaction and a few broker round trips); on ``webhooks`` a webhook
       POST (``webhook_timeout_s``, waited on 5 s longer) and the broker round trip recording it.
       A sweep cut short is harmless: the next one redoes it.
    3. Celery gives back the messages it holds unacked (countdowns, the prefetched one): one
       broker round trip.
    """
    names = {name.strip() for name in queues.split(",")}
    broker = broker_round_trip_bound_s(settings)
    total = 0.0
    task = 0.0
    if LLM_QUEUE in names:
        total += settings.worker_shutdown_wait_s
        task = max(task, broker)
    if WEBHOOK_QUEUE in names:
        task = max(task, settings.webhook_timeout_s + 5 + broker)
    return total + task + broker
