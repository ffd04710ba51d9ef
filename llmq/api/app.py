"""The Flask app factory: ``create_app(settings)`` wires settings, database, Celery, logging,
Sentry, metrics, error handlers and the blueprints. Nothing connects until a request needs it."""

from __future__ import annotations

from flask import Flask

from llmq.api import admin, batches, chat, files, jobs, limits, ops, providers, ui, usage
from llmq.api.correlation import init_correlation
from llmq.api.errors import register_error_handlers
from llmq.api.metrics import init_metrics
from llmq.config.providers import provider_specs
from llmq.config.providers_file import load_providers_file
from llmq.config.settings import Settings, get_settings
from llmq.logs import configure_logging
from llmq.models.db import Database
from llmq.models.rollup import use_metadata_keys
from llmq.observability.sentry import init_sentry, tag_job_requests
from llmq.observability.tracing import init_tracing
from llmq.tasks.app import configure_celery
from llmq.workers.breaker import CircuitBreakers
from llmq.workers.ratelimit import fleet_limiter
from llmq.workers.redis_client import redis_client as build_redis_client


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)
    init_sentry(settings.sentry_dsn, component="api")
    init_tracing("llmq-api")  # only with OTEL_EXPORTER_OTLP_ENDPOINT
    app = Flask("llmq")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    db = Database.from_settings(settings)
    app.extensions["llmq.settings"] = settings
    app.extensions["llmq.db"] = db
    app.extensions["llmq.provider_specs"] = provider_specs(settings)
    providers_config = load_providers_file(settings.providers_file)
    redis_client = build_redis_client(settings.redis_target, socket_timeout=1, socket_connect_timeout=1)
    app.extensions["llmq.providers"] = providers_config
    use_metadata_keys(providers_config.usage.metadata_keys)
    app.extensions["llmq.redis"] = redis_client
    app.extensions["llmq.breakers"] = CircuitBreakers(redis_client, providers_config)
    app.extensions["llmq.limiter"] = fleet_limiter(redis_client, providers_config)
    configure_celery(settings)

    init_correlation(app)  # request_id in every log line and X-Request-ID; the submit span
    tag_job_requests(app)
    init_metrics(app, db)
    register_error_handlers(app)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(chat.bp)  # /v1/chat/completions: OpenAI's API, answered by a job
    app.register_blueprint(files.bp)  # OpenAI's Batch API: /v1/files, /v1/batches
    app.register_blueprint(batches.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(providers.bp)
    app.register_blueprint(usage.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(limits.bp)
    app.register_blueprint(ui.bp)  # /ui: the jobs page for people
    return app
