"""``llmq flower`` for real: on loopback without auth it serves; bound beyond loopback (0.0.0.0,
reached here through 127.0.0.1) without auth it refuses to start; with basic auth a request
without credentials gets 401 and one with them 200."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmq.config.settings import Settings
from tests.integration.services import (
    VENV_BIN,
    free_port,
    settings_env,
    start_process,
    stop_process,
    wait_for,
)

FLOWER_ENV = ("FLOWER_", "LLMQ_FLOWER_")


def _env(settings: Settings, **flower: str) -> dict[str, str]:
    env = {k: v for k, v in settings_env(settings).items() if not k.startswith(FLOWER_ENV)}
    return {**env, **flower}


def _up(url: str, auth: tuple[str, str] | None = None) -> bool:
    return httpx.get(url, auth=auth, timeout=2).status_code == 200


@pytest.fixture
def flower_port() -> int:
    return free_port()


@pytest.fixture
def run_flower() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        stop_process(proc)


def test_on_loopback_without_auth_flower_serves(
    settings: Settings, flower_port: int, logs_dir: Path, run_flower: list[subprocess.Popen[bytes]]
) -> None:
    env = _env(settings, FLOWER_PORT=str(flower_port))
    run_flower.append(start_process([str(VENV_BIN / "llmq"), "flower"], env, logs_dir / "flower-open.log"))
    url = f"http://127.0.0.1:{flower_port}"
    wait_for(lambda: _up(f"{url}/healthcheck"), timeout=120, what="Flower")
    assert httpx.get(f"{url}/api/workers", timeout=10).status_code == 200


def test_beyond_loopback_without_auth_flower_refuses_to_start(settings: Settings, flower_port: int) -> None:
    env = _env(settings, FLOWER_PORT=str(flower_port), FLOWER_ADDRESS="0.0.0.0")
    done = subprocess.run(
        [str(VENV_BIN / "llmq"), "flower"], env=env, capture_output=True, timeout=120, check=False
    )
    assert done.returncode != 0
    assert b"refusing to start Flower on '0.0.0.0' without auth" in done.stderr
    assert b"FLOWER_BASIC_AUTH" in done.stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{flower_port}/", timeout=2)


def test_beyond_loopback_with_basic_auth_only_credentials_get_in(
    settings: Settings, flower_port: int, logs_dir: Path, run_flower: list[subprocess.Popen[bytes]]
) -> None:
    env = _env(
        settings, FLOWER_PORT=str(flower_port), FLOWER_ADDRESS="0.0.0.0", FLOWER_BASIC_AUTH="ops:s3cret"
    )
    run_flower.append(start_process([str(VENV_BIN / "llmq"), "flower"], env, logs_dir / "flower-locked.log"))
    url = f"http://127.0.0.1:{flower_port}"
    wait_for(lambda: _up(f"{url}/", auth=("ops", "s3cret")), timeout=120, what="Flower")
    for path in ("/", "/workers", "/tasks", "/api/workers"):
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 401, path
        assert httpx.get(f"{url}{path}", auth=("ops", "wrong"), timeout=10).status_code == 401, path
        assert httpx.get(f"{url}{path}", auth=("ops", "s3cret"), timeout=10).status_code == 200, path
