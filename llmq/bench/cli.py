"""``llmq bench``: the click command (registered in :mod:`llmq.cli` with
``main.add_command(bench)``), also runnable as ``python -m llmq.bench``."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from llmq.bench.stack import DEFAULT_DATABASE_URL, BenchError, Stack, StackConfig


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@click.command()
@click.option("--jobs", "-n", type=int, default=1000, show_default=True, help="Jobs offered.")
@click.option("--rate", "-r", type=float, default=100.0, show_default=True, help="Jobs offered per second.")
@click.option("--latency", type=float, default=2.0, show_default=True, help="Simulator mean latency, s.")
@click.option("--jitter", type=float, default=0.0, show_default=True, help="Simulator uniform ± jitter, s.")
@click.option(
    "--worker-concurrency", "-c", type=int, default=None, help="LLMQ_WORKER_CONCURRENCY (default 4)."
)
@click.option(
    "--workers",
    "-k",
    type=int,
    default=1,
    show_default=True,
    help="LLM worker processes; 0 measures the submit path alone.",
)
@click.option(
    "--pool",
    "-P",
    default="threads",
    show_default=True,
    help="Celery pool of the LLM workers (threads as deployed; solo, prefork, gevent, ...).",
)
@click.option("--api-workers", type=int, default=2, show_default=True, help="gunicorn workers of the API.")
@click.option("--webhook-concurrency", type=int, default=None, help="Webhook worker threads (default 20).")
@click.option(
    "--webhooks/--no-webhooks",
    default=True,
    show_default=True,
    help="Give every job a webhook_url to the receiver (else completion = jobs.completed_at).",
)
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="Seconds to wait, after the last submit, for every job to end "
    "(default: 60 + 3 * (latency + jitter)).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--baseline/--no-baseline",
    default=False,
    show_default=True,
    help="Then run the naive design: one prefork worker, concurrency = cores, prefetch 4.",
)
@click.option(
    "--baseline-seconds",
    type=float,
    default=60.0,
    show_default=True,
    help="The baseline is cut off this long after its first submit, finished or not.",
)
@click.option(
    "--baseline-jobs",
    type=int,
    default=None,
    help="Jobs offered to the baseline (default --jobs; at --rate, for at most --baseline-seconds).",
)
@click.option(
    "--database-url",
    envvar="LLMQ_BENCH_DATABASE_URL",
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    help="Dropped and created afresh (WITH (FORCE)).",
)
@click.option("--warmup-jobs", type=int, default=20, show_default=True)
@click.option(
    "--connections",
    type=int,
    default=2000,
    show_default=True,
    help="Keep-alive connections the load generator may open to the API.",
)
@click.option(
    "--burst-every",
    type=float,
    default=0.0,
    show_default=True,
    help="Offer the rate in bursts this many seconds apart (0: one request every 1/rate s).",
)
@click.option(
    "--budget-usd",
    type=float,
    default=None,
    help="Give the bench tenant a monthly budget: every call then reserves and settles it "
    "(the bench's model has no price, so no job is refused).",
)
@click.option(
    "--env", "extra_env", multiple=True, metavar="KEY=VALUE", help="Extra environment for every child."
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Logs and scratch files (default: a new temporary directory, kept).",
)
def bench(
    jobs: int,
    rate: float,
    latency: float,
    jitter: float,
    worker_concurrency: int | None,
    workers: int,
    pool: str,
    api_workers: int,
    webhook_concurrency: int | None,
    webhooks: bool,
    timeout: float | None,
    json_path: Path | None,
    baseline: bool,
    baseline_seconds: float,
    baseline_jobs: int | None,
    database_url: str,
    warmup_jobs: int,
    connections: int,
    burst_every: float,
    budget_usd: float | None,
    extra_env: tuple[str, ...],
    run_dir: Path | None,
) -> None:
    """Run the whole stack on this host, drive JOBS jobs at RATE/s through the API and report
    latency, overhead, in-flight calls, throughput, CPU and memory by process (and, with
    --baseline, the naive prefork design side by side)."""
    from llmq.bench.report import machine_info, markdown, phase_figures, ratios
    from llmq.bench.runner import PhasePlan, close_clients, run_phase
    from llmq.config.settings import Settings

    fields = Settings.model_fields
    default_concurrency = int(fields["worker_concurrency"].default)
    default_hooks = int(fields["webhook_worker_concurrency"].default)
    env = {}
    for item in extra_env:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--env")
        env[key] = value
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="llmq-bench-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    config = StackConfig(
        latency_s=latency,
        jitter_s=jitter,
        worker_concurrency=worker_concurrency or default_concurrency,
        workers=workers,
        pool=pool,
        api_workers=api_workers,
        webhook_concurrency=webhook_concurrency or default_hooks,
        database_url=database_url,
        run_dir=run_dir,
        extra_env=env,
        budget_usd=budget_usd,
    )
    wait_s = timeout if timeout is not None else 60 + 3 * (latency + jitter)
    offer_s = jobs / rate
    plans = [
        PhasePlan(
            name="llmq",
            baseline=False,
            jobs=jobs,
            rate=rate,
            max_offer_s=offer_s * 1.5 + 30,
            wait_s=wait_s,
            webhooks=webhooks and workers > 0,
            warmup_jobs=warmup_jobs,
            submit_only=workers == 0,
            connections=connections,
            burst_every_s=burst_every,
        )
    ]
    if baseline:
        plans.append(
            PhasePlan(
                name="baseline",
                baseline=True,
                jobs=baseline_jobs or jobs,
                rate=rate,
                max_offer_s=baseline_seconds,
                wait_s=wait_s,
                cutoff_s=baseline_seconds,
                webhooks=webhooks,
                warmup_jobs=min(warmup_jobs, 2 * (os.cpu_count() or 1)),
            )
        )
    click.echo(f"llmq bench: run directory {run_dir}", err=True)
    machine = machine_info()
    stack = Stack(config)
    phases: dict[str, Any] = {}
    # A SIGTERM (timeout, kill) stops the bench like Ctrl-C: the stack is torn down, not orphaned.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.start()
        for plan in plans:
            click.echo(f"llmq bench: phase {plan.name}: {plan.jobs} jobs at {plan.rate}/s", err=True)
            phases[plan.name] = phase_figures(run_phase(stack, plan))
    except BenchError as exc:
        click.echo(stack.log_tails(), err=True)
        raise click.ClickException(str(exc)) from None
    finally:
        stack.close()
        close_clients()
    machine["loadavg_after"] = list(os.getloadavg())
    doc: dict[str, Any] = {
        "config": {
            "command": _command_line(),
            "jobs": jobs,
            "rate": rate,
            "latency": latency,
            "jitter": jitter,
            "worker_concurrency": config.worker_concurrency,
            "workers": workers,
            "pool": pool,
            "api_workers": api_workers,
            "webhook_concurrency": config.webhook_concurrency,
            "webhooks": webhooks,
            "connections": connections,
            "burst_every": burst_every,
            "timeout": wait_s,
            "baseline": baseline,
            "baseline_seconds": baseline_seconds if baseline else None,
            "database_url": _safe(database_url),
            "extra_env": env,
            "budget_usd": budget_usd,
            "run_dir": str(run_dir),
            "children": {name: shlex.join(argv) for name, argv in stack.commands.items()},
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        },
        "machine": machine,
        "phases": phases,
    }
    if "baseline" in phases:
        doc["ratios"] = ratios(phases["llmq"], phases["baseline"])
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=2, default=str))
    click.echo(markdown(doc))


def _command_line() -> str:
    args = sys.argv[1:]
    if args and args[0] == "bench":
        args = args[1:]
    return "llmq bench " + shlex.join(args)


def _safe(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.split("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return url
