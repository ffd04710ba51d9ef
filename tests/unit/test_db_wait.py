"""``llmq db wait``, the init container of the Kubernetes pods that use the database: it lets new
code start once the schema is at its release's head (or newer: a rollback), never before."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from llmq.cli import main
from llmq.config.settings import get_settings
from llmq.models.migrate import heads, schema_state, upgrade, wait_for_schema


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/llmq.db"


def _set_revision(url: str, revision: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()


def test_an_empty_database_is_behind_and_a_migrated_one_current(url: str) -> None:
    assert schema_state(url) == "behind"
    upgrade(url)
    assert schema_state(url) == "current"


def test_an_older_revision_is_behind_a_newer_unknown_one_ahead(url: str) -> None:
    upgrade(url)
    _set_revision(url, "0001")  # an ancestor of head: the migration Job has not run yet
    assert schema_state(url) == "behind"
    _set_revision(url, "9999_from_a_newer_release")  # migrated by a newer image: a rollback
    assert schema_state(url) == "ahead"


def test_wait_returns_none_while_behind_and_the_state_once_there(url: str) -> None:
    assert wait_for_schema(url, timeout_s=0) is None
    upgrade(url)
    assert wait_for_schema(url, timeout_s=0) == "current"


def test_wait_treats_an_unreachable_database_as_not_ready() -> None:
    unreachable = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1"
    assert wait_for_schema(unreachable, timeout_s=0) is None


def test_the_command_exits_non_zero_until_migrated(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        refused = runner.invoke(main, ["db", "wait", "--timeout", "0"])
        assert refused.exit_code == 1 and "llmq db upgrade" in refused.output
        assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
        assert runner.invoke(main, ["db", "wait", "--timeout", "0"]).exit_code == 0
        assert len(heads()) == 1
    finally:
        get_settings.cache_clear()
