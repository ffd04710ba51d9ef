"""A small run of ``llmq bench`` (llmq and the naive baseline), so that the benchmark keeps working.

It asserts that every job of the llmq phase completed and that the report carries every figure;
never a time — timings on a shared CI box are not a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DATABASE_URL = os.environ.get(
    "LLMQ_BENCH_SMOKE_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/llmq_bench_smoke"
)
PERCENTILES = {"n", "p50", "p95", "p99", "max"}
PHASE_FIELDS = {
    "jobs",
    "submit_latency_ms",
    "e2e_latency_ms",
    "queue_overhead_ms",
    "pickup_ms",
    "result_to_webhook_ms",
    "provider_call_ms",
    "peak_in_flight",
    "throughput_jobs_s",
    "steady_throughput_jobs_s",
    "cpu",
    "worker_host_peak_rss_mib",
    "machine",
}
JOB_COUNTS = {"offered", "accepted", "completed", "failed", "lost"}
GROUPS = {
    "api",
    "llm_worker",
    "webhook_worker",
    "beat",
    "postgres",
    "postgres_cluster",
    "redis",
    "simulator",
    "receiver",
    "load_generator",
    "worker_host",
    "total",
}


def _check_phase(phase: dict, *, all_completed: bool) -> None:
    assert PHASE_FIELDS <= phase.keys()
    assert JOB_COUNTS <= phase["jobs"].keys()
    for name in ("submit_latency_ms", "e2e_latency_ms", "queue_overhead_ms"):
        assert PERCENTILES <= phase[name].keys(), name
    assert GROUPS <= phase["cpu"].keys()
    for group in GROUPS:
        assert {"cpu_ms_per_job", "peak_rss_mib", "cores"} <= phase["cpu"][group].keys(), group
    if all_completed:
        jobs = phase["jobs"]
        assert jobs["accepted"] == jobs["offered"] == 30
        assert jobs["completed"] == 30, jobs
        assert jobs["failed"] == 0 and jobs["lost"] == 0, jobs
        assert phase["e2e_latency_ms"]["n"] == 30  # every webhook arrived
        assert phase["queue_overhead_ms"]["n"] == 30
        assert phase["peak_in_flight"] >= 1
        assert phase["cpu"]["llm_worker"]["cpu_ms_per_job"] > 0


@pytest.mark.timeout(600)
def test_bench_runs_the_stack_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "llmq.bench",
            "--jobs", "30", "--rate", "10", "--latency", "0.2",
            "--worker-concurrency", "20", "--warmup-jobs", "5",
            "--baseline", "--baseline-seconds", "15",
            "--database-url", DATABASE_URL,
            "--run-dir", str(tmp_path / "run"),
            "--json", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    doc = json.loads(out.read_text())
    assert {"config", "machine", "phases", "ratios"} <= doc.keys()
    _check_phase(doc["phases"]["llmq"], all_completed=True)
    _check_phase(doc["phases"]["baseline"], all_completed=False)
    assert {"throughput", "peak_in_flight", "e2e_p50_baseline_over_llmq"} <= doc["ratios"].keys()
    for label in ("submit latency", "end-to-end", "queue overhead", "peak in-flight", "CPU-ms per job"):
        assert label in proc.stdout, label
