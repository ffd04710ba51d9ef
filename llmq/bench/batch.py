"""``python -m llmq.bench.batch``: the throughput of one OpenAI-style batch, end to end.

The whole stack of ``llmq bench`` (Redis, Postgres, the simulator, the API under gunicorn, the
webhook worker that runs the batch tasks, beat, the LLM workers), then, through the official
``openai`` SDK: upload a LINES-line JSONL file, create the batch, poll it until it ends, download
its output. Reported: lines per second from the upload's first byte to the batch's
``completed``, when each stage was first seen by the poll (uploaded, ``in_progress``,
``finalizing``, ended), and the peak memory (RSS) of the API, the LLM workers and the batch
worker while it ran.

    python -m llmq.bench.batch --lines 10000 --latency 0
    python -m llmq.bench.batch --lines 10000 --latency 10 --json batch-10s.json
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from llmq.bench.sampler import ProcessSampler, postgres_groups, tree
from llmq.bench.stack import DEFAULT_DATABASE_URL, BenchError, Stack, StackConfig, database_name

MODEL = "gpt-4o-mini"  # the simulator answers any name; a bare OpenAI name is openai/<name> on llmq


def write_input(path: Path, lines: int) -> int:
    """A batch input of ``lines`` chat completion requests, written line by line; its size."""
    with open(path, "wb") as handle:
        for n in range(lines):
            line = {
                "custom_id": f"bench-{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"Summarise item {n} in one line."}],
                    "max_tokens": 32,
                },
            }
            handle.write(json.dumps(line).encode() + b"\n")
    return path.stat().st_size


def _sampler(stack: Stack) -> ProcessSampler:
    return ProcessSampler(
        {
            "api": tree(lambda: stack.pids("api")),
            "llm_worker": tree(lambda: stack.pids(*stack.llm_workers)),
            "batch_worker": tree(lambda: stack.pids("webhook_worker")),  # the webhooks queue
            **postgres_groups(database_name(stack.config.database_url)),
        }
    )


def run_batch(stack: Stack, input_path: Path, lines: int, timeout_s: float) -> dict[str, Any]:
    import openai

    client = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=stack.api_key, timeout=300, max_retries=0)
    sampler = _sampler(stack)
    sampler.start()
    marks: dict[str, float] = {}
    try:
        started = time.monotonic()
        with open(input_path, "rb") as handle:
            uploaded = client.files.create(file=(input_path.name, handle), purpose="batch")
        marks["uploaded"] = time.monotonic() - started
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = started + timeout_s
        while True:
            batch = client.batches.retrieve(batch.id)
            elapsed = time.monotonic() - started
            if batch.status == "in_progress" and "in_progress" not in marks:
                marks["in_progress"] = elapsed
            if batch.status == "finalizing" and "finalizing" not in marks:
                marks["finalizing"] = elapsed
            if batch.status in {"completed", "failed", "expired", "cancelled"}:
                marks["ended"] = elapsed
                break
            if time.monotonic() > deadline:
                raise BenchError(f"the batch did not end in {timeout_s:.0f} s: {batch.status}")
            time.sleep(0.25)
    finally:
        sampler.stop()
    output_lines = 0
    if batch.output_file_id:
        output_lines = sum(1 for line in client.files.content(batch.output_file_id).text.splitlines() if line)
    counts = batch.request_counts
    figures = sampler.figures()
    return {
        "lines": lines,
        "status": batch.status,
        "request_counts": counts.model_dump() if counts is not None else None,
        "output_lines": output_lines,
        "seconds": {key: round(value, 2) for key, value in marks.items()},
        "lines_per_s": round(lines / marks["ended"], 1),
        "peak_rss_mib": {name: round(figures[name].peak_rss_mib, 1) for name in figures},
        "cpu_s": {name: round(figures[name].cpu_s, 1) for name in figures},
        "machine": sampler.machine(),
    }


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@click.command()
@click.option("--lines", type=int, default=10_000, show_default=True, help="Lines of the batch.")
@click.option("--latency", type=float, default=0.0, show_default=True, help="Simulator latency, s.")
@click.option("--workers", type=int, default=1, show_default=True, help="LLM worker processes.")
@click.option("--worker-concurrency", type=int, default=4, show_default=True)
@click.option("--pool", default="threads", show_default=True)
@click.option("--api-workers", type=int, default=2, show_default=True)
@click.option("--timeout", type=float, default=1800.0, show_default=True, help="Give up after, s.")
@click.option("--database-url", default=DEFAULT_DATABASE_URL, show_default=True, help="Dropped and rebuilt.")
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write figures here."
)
@click.option(
    "--run-dir", type=click.Path(path_type=Path), default=None, help="Logs and var (default: temp)."
)
def main(
    lines: int,
    latency: float,
    workers: int,
    worker_concurrency: int,
    pool: str,
    api_workers: int,
    timeout: float,
    database_url: str,
    json_path: Path | None,
    run_dir: Path | None,
) -> None:
    """Upload a LINES-line batch through the openai SDK and time it to ``completed``."""
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="llmq-bench-batch-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(
        StackConfig(
            latency_s=latency,
            jitter_s=0.0,
            worker_concurrency=worker_concurrency,
            workers=workers,
            pool=pool,
            api_workers=api_workers,
            webhook_concurrency=20,
            database_url=database_url,
            run_dir=run_dir,
            extra_env={"LLMQ_BATCH_MAX_LINES": str(max(lines, 50_000)), "LLMQ_BATCH_TICK_S": "1"},
        )
    )
    input_path = run_dir / "batch-input.jsonl"
    size = write_input(input_path, lines)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.start()
        stack.start_llm_workers("batch", baseline=False)
        click.echo(f"llmq bench batch: {lines} lines ({size / 1e6:.1f} MB), latency {latency:g} s", err=True)
        figures = run_batch(stack, input_path, lines, timeout)
    except BenchError as exc:
        click.echo(stack.log_tails(), err=True)
        raise click.ClickException(str(exc)) from None
    finally:
        stack.close()
    figures["latency_s"] = latency
    figures["workers"] = workers
    figures["worker_concurrency"] = worker_concurrency
    text = json.dumps(figures, indent=2)
    if json_path is not None:
        json_path.write_text(text + "\n")
    click.echo(text)
    if figures["status"] != "completed" or figures["output_lines"] != lines:
        sys.exit(1)


if __name__ == "__main__":
    main(prog_name="python -m llmq.bench.batch")
