"""Run Alembic from code: ``llmq db upgrade``, the stack's start-up and the tests all use this."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", "llmq:migrations")
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    from llmq.models.db import _ensure_sqlite_dir

    if database_url.startswith("sqlite"):
        _ensure_sqlite_dir(database_url)
    command.upgrade(alembic_config(database_url), revision)


def heads(database_url: str = "sqlite://") -> list[str]:
    return list(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())


def recreate_database(database_url: str) -> None:
    """Drop (``WITH (FORCE)``) and create a Postgres database, then migrate it to head: the
    throw-away databases of the tests and of ``llmq bench``."""
    import psycopg

    plain = database_url.replace("postgresql+psycopg://", "postgresql://")
    server, _, name = plain.rpartition("/")
    with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(database_url)
