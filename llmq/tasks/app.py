"""The Celery app, configured from the one Settings object.

``celery_app`` exists at import without touching the broker; its configuration is computed
lazily from the environment (for ``celery -A llmq.tasks.app worker``) unless
:func:`configure_celery` was given a Settings first (the API and the tests do that).

Queues: ``llm`` carries ``llmq.generate``; ``webhooks`` carries ``llmq.deliver_webhook`` and
``llmq.sweep`` (and the batch tasks), so a slow webhook receiver never holds an LLM worker slot.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutting_down
from kombu.entity import Queue

from llmq.config.settings import Settings, get_settings
from llmq.tasks.broker import keep_one_client_per_channel

LLM_QUEUE = "llm"
WEBHOOK_QUEUE = "webhooks"
TASK_MODULES = [
    "llmq.tasks.generate",
    "llmq.tasks.webhooks",
    "llmq.tasks.sweep",
    "llmq.tasks.provider_batches",
    "llmq.tasks.batches",
]


def celery_config(settings: Settings) -> dict[str, Any]:
    # REDIS_URL in kombu's spelling: a Sentinel set becomes sentinel://…;sentinel://… with the
    # master's name in the transport options, TLS becomes broker_use_ssl (Flower reads both).
    broker = settings.redis_target.celery_broker(socket_timeout=10, socket_connect_timeout=2)
    return {
        "broker_url": broker.url,
        "broker_use_ssl": broker.use_ssl,
        "broker_connection_retry_on_startup": True,
        # Redis transport: a message that is not acked within the visibility timeout is handed
        # to another worker. It must exceed the longest job, or long LLM calls run twice.
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
            "health_check_interval": 25,
            **broker.transport_options,
        },
        "broker_pool_limit": 50,
        # Fail fast on submit when the broker is down instead of hanging the HTTP request.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        # A job message is acked when its task returns: once the job is claimed and its call
        # started (from then on the job's lease protects it: a worker that dies stops renewing it
        # and the sweeper requeues the job), or once it was parked or answered. A worker that
        # dies during the claim leaves the message unacked, so it is delivered again (the
        # compare-and-set in the database makes the redelivery harmless).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.job_time_limit_s,
        "task_queues": [Queue(LLM_QUEUE), Queue(WEBHOOK_QUEUE)],
        "task_default_queue": LLM_QUEUE,
        "task_routes": {
            "llmq.generate": {"queue": LLM_QUEUE},
            "llmq.deliver_webhook": {"queue": WEBHOOK_QUEUE},
            "llmq.sweep": {"queue": WEBHOOK_QUEUE},
            "llmq.provider_batches": {"queue": WEBHOOK_QUEUE},
            "llmq.batch_expand": {"queue": WEBHOOK_QUEUE},
            "llmq.batch_tick": {"queue": WEBHOOK_QUEUE},
        },
        # Flower and `celery events` need task events.
        "worker_send_task_events": settings.task_events,
        # No task-sent event: it is a second publish on every submit, and Flower shows tasks from
        # the worker's received/started/succeeded events.
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "llmq-sweep": {
                "task": "llmq.sweep",
                "schedule": settings.sweep_interval_s,
                "options": {"expires": max(settings.sweep_interval_s * 2, 1.0)},
            },
            # Gathers, sends and polls provider batches; returns at once while
            # [provider_batches] is off (tasks/provider_batches.py).
            "llmq-provider-batches": {
                "task": "llmq.provider_batches",
                "schedule": settings.provider_batch_interval_s,
                "options": {"expires": max(settings.provider_batch_interval_s * 2, 1.0)},
            },
            # Expands, counts, finalizes and expires /v1/batches (tasks/batches.py).
            "llmq-batches": {
                "task": "llmq.batch_tick",
                "schedule": settings.batch_tick_s,
                "options": {"expires": max(settings.batch_tick_s * 2, 1.0)},
            },
        },
        "timezone": "UTC",
        "enable_utc": True,
    }


keep_one_client_per_channel()
celery_app = Celery("llmq", include=TASK_MODULES)
celery_app.add_defaults(lambda: celery_config(get_settings()))


def configure_celery(settings: Settings) -> Celery:
    """Point the process's Celery app at these settings (Flask's ``celery_init_app`` pattern)."""
    celery_app.conf.update(celery_config(settings))
    # Drop connection pools made for an earlier configuration (Celery does the same after a fork),
    # so a new broker URL takes effect for the next publish.
    celery_app._pool = None
    if "amqp" in celery_app.__dict__:
        celery_app.__dict__["amqp"]._producer_pool = None
    return celery_app


def _on_worker_process_init(**_: object) -> None:
    # A forked pool process must not reuse the parent's connections or its loop thread.
    from llmq.tasks.runtime import reset_runtime

    reset_runtime()


def _on_worker_init(**_: object) -> None:
    from llmq.logs import configure_logging
    from llmq.observability.sentry import init_sentry
    from llmq.observability.tracing import init_tracing

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    init_sentry(settings.sentry_dsn, component="worker")
    init_tracing("llmq-worker")  # only with OTEL_EXPORTER_OTLP_ENDPOINT


def _on_worker_ready(**_: object) -> None:
    # Build the runtime (database pool, provider clients, lease keeper) before the first job
    # arrives, so the first calls do not pay for it while their rate-limit admission ticks.
    from llmq.tasks.runtime import get_runtime

    get_runtime()


def _on_worker_shutting_down(**_: object) -> None:
    # Warm shutdown (SIGTERM, a deploy): stop the calls in flight and wait until the finishers have
    # handed each job back to the queue, instead of holding the deploy up or waiting for a lease
    # to expire; webhook POSTs under way are given the same time to end and be recorded.
    from llmq.tasks.runtime import current_runtime

    runtime = current_runtime()
    if runtime is not None:
        runtime.shutdown_calls()


worker_process_init.connect(_on_worker_process_init, weak=False)
worker_init.connect(_on_worker_init, weak=False)
worker_shutting_down.connect(_on_worker_shutting_down, weak=False)
worker_ready.connect(_on_worker_ready, weak=False)
