"""Engine and session handling: one ``Database`` per process, explicit transaction boundaries.

Nothing connects at import. Forked worker processes call :meth:`Database.dispose` so no
connection is shared across a fork.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlalchemy.exc
import structlog
import tenacity
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from llmq.config.settings import Settings

T = TypeVar("T")
P = ParamSpec("P")
logger = structlog.get_logger(__name__)


class Database:
    def __init__(
        self, url: str, *, pool_size: int = 10, max_overflow: int = 10, prepared_statements: bool = True
    ) -> None:
        """``prepared_statements`` False: psycopg never prepares a statement on the server (for
        PgBouncer's transaction pooling, where consecutive transactions may run on different
        server connections)."""
        self.url = url
        # No pre-ping: it is a round trip on every checkout. After a database restart the first use
        # of a dead connection fails, SQLAlchemy then drops every pooled connection, and callers
        # retry (workers: ``retry_on_database_outage``; the API answers 503 with Retry-After).
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            _ensure_sqlite_dir(url)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_recycle=1800)
            if not prepared_statements:
                kwargs["connect_args"] = {"prepare_threshold": None}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The process's database, as the settings size and shape its pool."""
        return cls(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            prepared_statements=settings.db_prepared_statements,
        )

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commits on success, rolls back on any exception."""
        with self.sessionmaker.begin() as session:
            yield session

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read-only look (no commit)."""
        with self.sessionmaker() as session:
            yield session

    def ping(self) -> None:
        """One round trip to the database; raises when it is unreachable."""
        with self.session() as session:
            session.execute(text("SELECT 1"))

    def dispose(self, *, close: bool = True) -> None:
        """Close pooled connections; after a fork, pass ``close=False`` to only forget the
        parent's connections without touching their sockets."""
        self.engine.dispose(close=close)


def _ensure_sqlite_dir(url: str) -> None:
    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def retry_on_database_outage(fn: Callable[P, T]) -> Callable[P, T]:
    """Retry a unit of work while the database is unreachable (a restart, a failover) for up to
    half a lease: the result of a finished provider call is worth waiting for, and running the
    call again would cost the user twice. Errors that are not about the connection are raised."""
    return tenacity.retry(
        retry=tenacity.retry_if_exception(is_database_outage),
        wait=tenacity.wait_exponential_jitter(initial=0.2, max=3.0),
        stop=tenacity.stop_after_delay(30.0),
        reraise=True,
        before_sleep=lambda state: logger.warning(
            "database_unavailable_retrying", attempt=state.attempt_number, fn=getattr(fn, "__name__", "")
        ),
    )(fn)


def is_database_outage(exc: BaseException) -> bool:
    """The database could not be reached or the connection was lost: worth trying again."""
    return isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError) or (
        isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated
    )


def on_postgres(session: Session) -> bool:
    """Whether the session's database is Postgres, where a batch is written with one statement of
    arrays (``unnest``, data-modifying CTEs); other databases take one statement per row."""
    return session.get_bind().dialect.name == "postgresql"


def as_arrays(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows as one list per column: the parameters of a Postgres ``unnest(...)`` statement that
    writes a whole batch at once."""
    return {key: [row[key] for row in rows] for key in rows[0]}
