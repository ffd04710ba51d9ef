"""Run Alembic from code: ``llmq db upgrade``, the stack's start-up and the tests all use this;
and tell whether a database's schema is the one this code expects (``llmq db wait``, the init
container of every Kubernetes pod that uses the database, while the migration Job runs)."""

from __future__ import annotations

import time
from typing import Literal

import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

SchemaState = Literal["current", "behind", "ahead"]


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


def schema_state(database_url: str) -> SchemaState:
    """``current``: the database is at this code's head revisions; ``ahead``: it is at a revision
    this code does not know, so a newer release migrated it (migrations only add, so this code
    still runs on it: a rollback); ``behind``: an older schema, or none yet."""
    script = ScriptDirectory.from_config(alembic_config(database_url))
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()
    if current == set(script.get_heads()):
        return "current"
    known = {revision.revision for revision in script.walk_revisions()}
    if current - known:
        return "ahead"
    return "behind"


def wait_for_schema(database_url: str, timeout_s: float, interval_s: float = 2.0) -> SchemaState | None:
    """Poll until the schema is ``current`` or ``ahead``; the state, or None when the database
    was still behind (or unreachable) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            state = schema_state(database_url)
        except sqlalchemy.exc.OperationalError:  # not reachable yet: keep waiting
            state = None
        if state in ("current", "ahead"):
            return state
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval_s)
