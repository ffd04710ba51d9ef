"""The one settings object: read from the environment, shared by Flask, Celery, the CLI and tests.

Tests build their own ``Settings(...)`` and pass it in; nothing reads the environment at import time
except through :func:`get_settings`, which is called by entry points (CLI, Celery worker boot).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from llmq.config.redis_url import RedisTarget, parse_redis_url

DEFAULT_PROVIDERS_FILE = Path(__file__).parent.parent / "providers.default.toml"
_EXTRA_PROVIDER_ENV = re.compile(r"^LLMQ_PROVIDER_([A-Z0-9_]+)_BASE_URL$")


class OpenAICompatibleEndpoint(BaseModel):
    """A named OpenAI-compatible server (vLLM, Ollama, llama.cpp): models ``<name>/<model>``."""

    base_url: str
    api_key: str = "not-needed"


def _webhook_schedule(raw: str | list[float]) -> list[float]:
    if isinstance(raw, list):
        return [float(x) for x in raw]
    return [float(part) for part in raw.split(",") if part.strip()]


class Settings(BaseSettings):
    """Every knob of llmq. Environment names are the field names upper-cased with ``LLMQ_``,
    except the conventional ones (``DATABASE_URL``, ``REDIS_URL``, provider keys, ``SENTRY_DSN``,
    ``FLOWER_PORT``)."""

    model_config = SettingsConfigDict(env_prefix="LLMQ_", extra="ignore", populate_by_name=True)

    # --- where things live -------------------------------------------------------------------
    database_url: str = Field(
        default="sqlite:///var/llmq.db",
        validation_alias=AliasChoices("DATABASE_URL", "LLMQ_DATABASE_URL"),
    )
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "LLMQ_REDIS_URL"))
    var_dir: Path = Path("var")

    # --- providers -----------------------------------------------------------------------------
    openai_api_key: str | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, validation_alias="OPENAI_BASE_URL")
    anthropic_api_key: str | None = Field(default=None, validation_alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = Field(default=None, validation_alias="ANTHROPIC_BASE_URL")
    extra_providers: dict[str, OpenAICompatibleEndpoint] = Field(default_factory=dict)
    simulator_url: str = "http://127.0.0.1:8100"
    simulator_port: int = 8100
    providers_file: Path = DEFAULT_PROVIDERS_FILE
    default_model: str = "openai/gpt-4o-mini"
    default_max_tokens: int = 1024  # Anthropic requires max_tokens; used when a job gives none
    provider_timeout_s: float = 120.0
    provider_connect_timeout_s: float = 5.0
    provider_max_connections: int = 1500  # per provider per process: at least worker_max_in_flight
    # Calls stream, so a long generation shows its progress and partial text while it runs;
    # progress is written to Redis (not the job's row) at most once per progress_interval_s.
    stream: bool = True
    progress_interval_s: float = 1.0

    # --- retries -------------------------------------------------------------------------------
    max_attempts: int = 5
    retry_base_s: float = 1.0
    retry_cap_s: float = 60.0
    # A wait up to this long is scheduled as a Celery countdown; longer ones park in the database.
    max_countdown_s: float = 10.0

    # The answer of a job that asked for degraded_ok when every model failed.
    degraded_text: str = "The service could not generate an answer right now. Please try again later."

    # --- webhooks ------------------------------------------------------------------------------
    webhook_timeout_s: float = 10.0
    # Refuse webhook URLs that resolve to loopback/private/link-local/CGNAT/multicast/reserved
    # addresses unless this is set (development and tests; `llmq run` sets it).
    webhook_allow_private: bool = False
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0]
    )

    # --- database connections (per process) ---
    # Most of a worker's threads wait on a provider holding no connection; a small pool serves
    # the short transactions, and keeps a fleet of workers under Postgres' max_connections.
    db_pool_size: int = 10
    db_max_overflow: int = 20
    # psycopg prepares a statement on the server after its 5th run on a connection: less parsing
    # and planning on the hot path. Behind PgBouncer in transaction pooling mode (before 1.21, or
    # without max_prepared_statements), a prepared statement lives on one server connection and
    # the next transaction may run on another: set this to false there (README "PgBouncer").
    db_prepared_statements: bool = True

    # --- workers and queue ---------------------------------------------------------------------
    # Celery pool threads of an LLM worker. A task only claims its job and starts the call (a call
    # in flight holds no thread); a few threads let one claim's round trips to Postgres and Redis
    # overlap another's: 143 → 165 jobs/s CPU-bound against the solo pool (BENCHMARKS.md).
    worker_concurrency: int = 4
    # Provider calls one worker process keeps in flight at most; a full process stops taking jobs.
    worker_max_in_flight: int = 1500
    # Threads that record the outcome of finished calls (database and Redis writes).
    worker_finishers: int = 8
    # How often CPython makes a busy thread hand the GIL over (its default is 5 ms). A worker's
    # threads mostly wait on sockets; each reply they get waits for the GIL, so a shorter interval
    # keeps a thousand streams on the event loop from delaying every claim by milliseconds.
    worker_switch_interval_s: float = 0.0005
    webhook_worker_concurrency: int = 20
    # Task events (received/started/succeeded) feed Flower's task pages; each is a publish to Redis.
    # Off: Flower still lists the workers and their queues, not the tasks.
    task_events: bool = True
    job_time_limit_s: int = 900
    # Redis hands an unacked message to another worker after this long. A job's message is acked
    # once its call has started (the lease covers the call); a message lives unacked while it
    # waits for its countdown (at most max_countdown_s) or while a webhook retry POSTs. The check
    # below keeps the old, larger margin (provider_timeout_s) for anyone running tasks by hand.
    # Recovery of a dead worker's jobs never waits for it: leases do that.
    visibility_timeout_s: int = 3600
    sweep_interval_s: float = 5.0
    # How often beat runs llmq.provider_batches (gather, send, poll: see [provider_batches] of the
    # providers file for when each is due).
    provider_batch_interval_s: float = 10.0
    # A worker renews the lease of each job it runs every lease_s/3; a job whose lease expired
    # (its worker was SIGKILLed, its host lost) goes back to the queue at the next sweep.
    lease_s: float = 60.0
    # On SIGTERM a worker stops its calls and waits at most this long for its finishers to hand
    # each job back to the queue (and for the webhook POSTs under way to end); see
    # llmq/tasks/shutdown.py for the whole warm shutdown a deploy must wait for.
    worker_shutdown_wait_s: float = 15.0
    # A queued job sent (and due) this much earlier than the oldest message still waiting on the
    # broker, or than now when none waits, and still not started, is sent again: its message is
    # lost (Redis restarted empty, a worker died holding it, a worker on another database took
    # it). So a lost job starts within requeue_after_s + sweep_interval_s of its turn.
    requeue_after_s: float = 10.0
    job_timeout_s: float = 3600.0  # deadline of a job that gives no timeout_s
    job_timeout_max_s: float = 86400.0

    # --- HTTP ----------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_url: str = "http://127.0.0.1:8000"
    flower_port: int = Field(default=5555, validation_alias=AliasChoices("FLOWER_PORT", "LLMQ_FLOWER_PORT"))
    # Flower listens on loopback unless told otherwise; beyond loopback it needs basic auth
    # ("user:password[,user2:password2]") or Flower's OAuth (FLOWER_AUTH, an email regex, with
    # FLOWER_AUTH_PROVIDER and FLOWER_OAUTH2_* read by Flower itself): see llmq/config/flower.py.
    flower_address: str | None = Field(
        default=None, validation_alias=AliasChoices("FLOWER_ADDRESS", "LLMQ_FLOWER_ADDRESS")
    )
    flower_basic_auth: str | None = Field(
        default=None, validation_alias=AliasChoices("FLOWER_BASIC_AUTH", "LLMQ_FLOWER_BASIC_AUTH")
    )
    flower_auth: str | None = Field(
        default=None, validation_alias=AliasChoices("FLOWER_AUTH", "LLMQ_FLOWER_AUTH")
    )
    max_body_bytes: int = 1_000_000
    # The bearer token of /v1/admin/* (LLMQ_ADMIN_TOKEN); unset, the admin API answers 403.
    admin_token: SecretStr | None = Field(default=None, min_length=16)
    # Signs the /ui session cookie. Unset: a random key per process, so a restart (or another
    # gunicorn worker) logs people out; set it (32+ random bytes) when the API runs several workers.
    ui_secret_key: str | None = None
    idempotency_ttl_s: int = 86400
    # /v1/chat/completions waits this long for its job, then answers 504 with the job's id (the job
    # runs on). Below the openai SDK's 600 s default timeout, so the client hears llmq's answer.
    # A request may ask for less or more (X-LLMQ-Wait-Timeout), up to chat_wait_max_s.
    chat_wait_s: float = Field(default=540.0, gt=0)
    chat_wait_max_s: float = Field(default=3600.0, gt=0)
    # While it waits, the job's status is read at most this far apart (its streamed text in Redis
    # every 0.1 s): a waiting request costs about two primary-key reads a second, no held connection.
    chat_poll_max_s: float = Field(default=0.5, gt=0)
    # Chat completions one API process keeps waiting at once; each holds one gunicorn thread
    # (LLMQ_API_THREADS, 8 by default), so the rest stay free for short requests. Past it: 429.
    chat_max_waiting: int = Field(default=6, ge=1)

    # --- batches (/v1/files, /v1/batches; README "Batches") ----------------------------------
    # Uploaded and written files (batch input, output and error JSONL); None: <var_dir>/files.
    files_dir: Path | None = None
    batch_max_lines: int = 50_000
    batch_max_file_bytes: int = 200 * 1024 * 1024
    # Lines made into jobs per transaction while a batch expands, and lines per write when its
    # output is written: what a batch holds in memory at once.
    batch_chunk_lines: int = 500
    # How often ``llmq.batch_tick`` refreshes the batches' counts and moves them along.
    batch_tick_s: float = 2.0
    # The time "24h" stands for. Clients may only send "24h"; a test shortens what it means.
    batch_completion_window_s: float = Field(default=86400.0, gt=0)

    # --- observability -------------------------------------------------------------------------
    sentry_dsn: str | None = Field(
        default=None, validation_alias=AliasChoices("SENTRY_DSN", "LLMQ_SENTRY_DSN")
    )
    log_level: str = "INFO"
    log_json: bool = True
    # Prometheus: each worker process serves its own metrics on this port (0: none; with several
    # workers on one host give each its own, `llmq worker --metrics-port`). ``metrics`` False
    # stops all recording (workers and API), to measure what the metrics cost.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics: bool = True

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: str | list[float]) -> list[float]:
        schedule = _webhook_schedule(value)
        if not schedule or any(s < 0 for s in schedule):
            raise ValueError("must be a comma-separated list of non-negative seconds")
        return schedule

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        # Plain postgres URLs select psycopg 3, the driver we ship.
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value:
            parse_redis_url(value)  # a malformed URL fails at start, saying which form to use
        return value or None

    @model_validator(mode="after")
    def _visibility_covers_an_attempt(self) -> Settings:
        longest = max(self.provider_timeout_s, self.max_countdown_s) + 60
        if self.visibility_timeout_s < longest:
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s}) must exceed the longest time a "
                f"message stays unacked (provider_timeout_s or max_countdown_s, plus 60 s): {longest:.0f}"
            )
        return self

    def model_post_init(self, __context: object) -> None:
        if not self.extra_providers:
            self.extra_providers = _extra_providers_from_env()

    # --- derived -------------------------------------------------------------------------------
    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def files_root(self) -> Path:
        return self.files_dir if self.files_dir is not None else self.var_dir / "files"

    @property
    def broker_url(self) -> str:
        return self.redis_url or "redis://127.0.0.1:6379/0"

    @property
    def redis_target(self) -> RedisTarget:
        """``REDIS_URL`` parsed: what every Redis client and the Celery broker are built from."""
        return parse_redis_url(self.broker_url)

    @property
    def uses_simulator(self) -> bool:
        """True when some built-in provider has no key: that provider goes to the simulator."""
        return not (self.openai_api_key and self.anthropic_api_key)


def _extra_providers_from_env() -> dict[str, OpenAICompatibleEndpoint]:
    found: dict[str, OpenAICompatibleEndpoint] = {}
    for key, value in os.environ.items():
        match = _EXTRA_PROVIDER_ENV.match(key)
        if match and value:
            name = match.group(1).lower()
            api_key = os.environ.get(f"LLMQ_PROVIDER_{match.group(1)}_API_KEY") or "not-needed"
            found[name] = OpenAICompatibleEndpoint(base_url=value, api_key=api_key)
    return found


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, for entry points. Tests construct ``Settings`` directly."""
    return Settings()
