"""llmq: LLM generation as durable asynchronous jobs (Flask API, Celery workers, Postgres)."""

__version__ = "0.1.0"
