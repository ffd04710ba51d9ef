"""``llmq tenants`` and ``llmq keys`` as an operator runs them on the host: real processes of the
console script against the test database."""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

import pytest

from llmq.config.settings import Settings
from llmq.models.db import Database
from tests.integration.services import VENV_BIN, settings_env

LLMQ = str(VENV_BIN / "llmq")


@pytest.fixture
def llmq(settings: Settings, database: Database) -> Any:
    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [LLMQ, *args], env=settings_env(settings), capture_output=True, text=True, timeout=60
        )
        if ok:
            assert done.returncode == 0, done.stderr
        return done

    return run


def test_an_operator_creates_a_tenant_and_a_limited_key_then_rotates_and_revokes_it(llmq: Any) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    created = json.loads(llmq("tenants", "create", name, "--tier", "pro", "--concurrency", "7").stdout)
    assert (created["tier"], created["concurrency"]) == ("pro", 7)
    shown = json.loads(llmq("tenants", "show", name).stdout)
    assert shown["effective"] == {"rpm": 100, "tpm": 1_000_000, "concurrency": 7}, "the tier's, and its own"

    issued = json.loads(
        llmq(
            "keys",
            "create",
            "--tenant",
            name,
            "--models",
            "local/*",
            "--expires",
            "30d",
            "--rpm",
            "5",
            "--json",
        ).stdout
    )
    listed = json.loads(llmq("keys", "list", "--tenant", name, "--json").stdout)
    assert [(k["id"], k["allowed_models"], k["rpm"], k["status"]) for k in listed] == [
        (issued["key_id"], ["local/*"], 5, "active")
    ]
    assert listed[0]["expires_at"] is not None and issued["api_key"] not in json.dumps(listed)

    changed = json.loads(llmq("keys", "set", issued["key_id"], "--rpm", "none", "--name", "batch").stdout)
    assert (changed["rpm"], changed["name"]) == (None, "batch")

    rotated = json.loads(llmq("keys", "rotate", issued["key_id"], "--json").stdout)
    assert rotated["replaced"] == issued["key_id"] and rotated["api_key"] != issued["api_key"]
    every = {k["id"]: k for k in json.loads(llmq("keys", "list", "--tenant", name, "--all", "--json").stdout)}
    assert every[issued["key_id"]]["status"] == "revoked"
    assert every[rotated["key_id"]]["allowed_models"] == ["local/*"], "the new key keeps the settings"

    llmq("keys", "revoke", rotated["key_id"])
    assert json.loads(llmq("keys", "list", "--tenant", name, "--json").stdout) == []


def test_tenant_changes_are_checked(llmq: Any) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    llmq("tenants", "create", name)
    unknown = llmq("tenants", "set", name, "--tier", "platinum", ok=False)
    assert unknown.returncode != 0 and "known tiers" in unknown.stderr
    bad = llmq("tenants", "set", name, "--rpm", "0", ok=False)
    assert bad.returncode != 0
    disabled = json.loads(llmq("tenants", "set", name, "--disable", "--rpm", "20").stdout)
    assert disabled["disabled"] is True and disabled["rpm"] == 20 and disabled["tier"] == "free"
    listing = llmq("tenants", "list").stdout
    assert name in listing and "disabled" in listing
    missing = llmq("keys", "revoke", "key_doesnotexist", ok=False)
    assert missing.returncode != 0 and "no key" in missing.stderr
