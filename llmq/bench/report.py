"""The figures of a phase, the JSON document and the Markdown tables.

Definitions (all times from the same host clock):

- submit latency: the load generator's ``answered - sent`` of each ``POST /v1/jobs``;
- end to end: the 202 received by the load generator → the job's webhook received by the
  receiver (``--no-webhooks``: → ``jobs.completed_at``);
- queue overhead: ``(attempt.started_at - job.created_at) + (webhook received - attempt.ended_at)``
  for the successful attempt: everything but the provider call; its two parts are reported too
  (pickup, and result → webhook);
- throughput: completed jobs / (first submit → last completion); *steady* throughput is the rate
  between the 10th and 90th percentile completion times (0.8·N / (t90 - t10)), which does not
  count the ramp-up (the first answers come one provider latency after the first submit) nor
  the drain, so it is what a long run would sustain;
- CPU-ms per job: a group's CPU time over the measured window / completed jobs.
"""

from __future__ import annotations

import math
import os
import platform
import time
from typing import Any

from llmq.bench.runner import PhaseData

GROUP_ORDER = [
    "api",
    "llm_worker",
    "webhook_worker",
    "beat",
    "postgres",
    "redis",
    "simulator",
    "receiver",
    "load_generator",
    "bench_runner",
]
# summed into "total": the groups above; postgres_cluster and worker_host are other views.


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        pos = q * (len(ordered) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return {
        "n": len(ordered),
        "p50": round(at(0.50), 2),
        "p95": round(at(0.95), 2),
        "p99": round(at(0.99), 2),
        "max": round(ordered[-1], 2),
    }


def phase_figures(data: PhaseData) -> dict[str, Any]:
    rows = data.load["rows"]
    by_id = {row[5]: row for row in rows if row[5]}
    statuses: dict[str, int] = {}
    for row in rows:
        key = str(row[4])
        statuses[key] = statuses.get(key, 0) + 1
    jobs = {j["id"]: j for j in data.jobs if j["id"] in by_id}
    count = {
        s: sum(1 for j in jobs.values() if j["status"] == s) for s in ("completed", "failed", "cancelled")
    }
    final = sum(count.values())
    accepted = len(by_id)

    submit_ms = [(row[3] - row[2]) * 1000 for row in rows if row[4] in (200, 202)]
    lag_ms = [(row[2] - row[1]) * 1000 for row in rows]
    e2e_ms: list[float] = []
    overhead_ms: list[float] = []
    pickup_ms: list[float] = []
    delivery_ms: list[float] = []
    provider_ms: list[float] = []
    done_at: list[float] = []
    outcomes: dict[str, int] = {}
    for job_id, job in jobs.items():
        if job["status"] != "completed":
            continue
        outcome = str(job["att_outcome"])
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        finished = data.arrivals.get(job_id) if data.plan.webhooks else job["completed"]
        if finished is None:
            continue
        done_at.append(finished)
        e2e_ms.append((finished - by_id[job_id][3]) * 1000)
        if job["att_outcome"] not in (None, "cached") and job["att_ended"] is not None:
            pickup = (job["att_started"] - job["created"]) * 1000
            delivery = (finished - job["att_ended"]) * 1000
            pickup_ms.append(pickup)
            delivery_ms.append(delivery)
            overhead_ms.append(pickup + delivery)
            provider_ms.append((job["att_ended"] - job["att_started"]) * 1000)

    # End to end over every accepted job, an unfinished one counted as done when the wait ended:
    # a lower bound, and the fair figure for a phase that was cut off with a backlog.
    censored_ms = list(e2e_ms)
    for job_id, row in by_id.items():
        found = jobs.get(job_id)
        if found is None or found["status"] not in ("completed", "failed", "cancelled"):
            censored_ms.append((data.wait_ended_at - row[3]) * 1000)

    first_sent = min((row[2] for row in rows), default=0.0)
    last_sent = max((row[2] for row in rows), default=0.0)
    throughput = None
    steady = None
    if done_at:
        span = max(done_at) - first_sent
        throughput = round(len(done_at) / span, 2) if span > 0 else None
        ordered = sorted(done_at)
        if len(ordered) >= 10:
            t10 = ordered[int(0.1 * (len(ordered) - 1))]
            t90 = ordered[int(0.9 * (len(ordered) - 1))]
            if t90 > t10:
                steady = round(0.8 * len(ordered) / (t90 - t10), 2)

    completed = count["completed"]
    # CPU per completed job; in a submit-only phase, per accepted job
    per = accepted if data.plan.submit_only else completed
    window = data.machine["window_s"]
    cpu = {}
    total_cpu_s = 0.0
    for name, fig in data.cpu.items():
        per_job = fig["cpu_s"] * 1000 / per if per else None
        cpu[name] = {
            "cpu_s": round(fig["cpu_s"], 2),
            "cpu_ms_per_job": round(per_job, 2) if per_job is not None else None,
            "cores": round(fig["cpu_s"] / window, 3) if window else None,
            "peak_rss_mib": round(fig["peak_rss_mib"], 1),
            "peak_anon_mib": round(fig["peak_anon_mib"], 1),
            "processes": fig["processes"],
            "peak_live": fig["peak_live"],
        }
        if name in GROUP_ORDER:
            total_cpu_s += fig["cpu_s"]
    cpu["total"] = {
        "cpu_s": round(total_cpu_s, 2),
        "cpu_ms_per_job": round(total_cpu_s * 1000 / per, 2) if per else None,
        "cores": round(total_cpu_s / window, 3) if window else None,
        "peak_rss_mib": None,
        "peak_anon_mib": None,
        "processes": None,
        "peak_live": None,
    }
    bench_cores = total_cpu_s / window if window else 0.0
    # what else ran on the machine: busy cores minus ours (postgres of other databases counts as other)
    machine = dict(data.machine)
    machine["bench_cores"] = round(bench_cores, 3)
    machine["outside_bench_cores"] = round(max(machine["busy_cores"] - bench_cores, 0.0), 3)
    machine["busy_cores"] = round(machine["busy_cores"], 3)
    machine["window_s"] = round(machine["window_s"], 1)

    return {
        "model": data.model,
        "workers": data.nodes,
        "jobs": {
            "offered": data.load["offered"],
            "accepted": accepted,
            "rejected": data.load["offered"] - accepted,
            # requests that got no HTTP answer at all (connection closed or reset, timeout)
            "unanswered": sum(1 for row in data.load["rows"] if row[4] == -1),
            "completed": completed,
            "failed": count["failed"],
            "cancelled": count["cancelled"],
            "lost": accepted - final,
            # requests the client gave up on (timeout) whose job the API committed all the same
            "created_unacknowledged": sum(1 for j in data.jobs if j["id"] not in by_id),
            "webhooks_received": len(data.arrivals),
            "webhook_duplicates_all_phases": data.receiver.get("duplicates", 0),
            "submit_status": statuses,
            "completed_by_attempt_outcome": outcomes,
        },
        "timed_out": data.timed_out,
        "submit_only": data.plan.submit_only,
        "cutoff_s": data.plan.cutoff_s,
        "offer_s": round(last_sent - first_sent, 2),
        "offered_rate": round((len(rows) - 1) / (last_sent - first_sent), 2)
        if last_sent > first_sent
        else None,
        "submit_latency_ms": percentiles(submit_ms),
        "generator_lag_ms": percentiles(lag_ms),
        "e2e_latency_ms": percentiles(e2e_ms),
        "e2e_all_accepted_lower_bound_ms": percentiles(censored_ms),
        "queue_overhead_ms": percentiles(overhead_ms),
        "pickup_ms": percentiles(pickup_ms),
        "result_to_webhook_ms": percentiles(delivery_ms),
        "provider_call_ms": percentiles(provider_ms),
        "peak_in_flight": data.sim.get("peak_in_flight"),
        "sim_requests": data.sim.get("requests_total"),
        "sim_responses_by_status": data.sim.get("responses_by_status"),
        "throughput_jobs_s": throughput,
        "steady_throughput_jobs_s": steady,
        "cpu": cpu,
        "worker_host_peak_rss_mib": cpu.get("worker_host", {}).get("peak_rss_mib"),
        "peak_db_connections": cpu.get("postgres_backends", {}).get("peak_live"),
        "machine": machine,
        "timeline": data.timeline,
    }


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as fh:
            mem_gib = round(int(fh.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_gib": mem_gib,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg": list(os.getloadavg()),
        "at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def ratios(llmq: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    def ratio(a: float | None, b: float | None) -> float | None:
        if a is None or b is None or b == 0:
            return None
        return round(a / b, 2)

    return {
        "throughput": ratio(llmq["throughput_jobs_s"], base["throughput_jobs_s"]),
        "steady_throughput": ratio(llmq["steady_throughput_jobs_s"], base["steady_throughput_jobs_s"]),
        "peak_in_flight": ratio(llmq["peak_in_flight"], base["peak_in_flight"]),
        # baseline / llmq: how many times longer a job waits end to end in the naive design,
        # unfinished jobs counted at the cut-off (so a lower bound when the baseline was cut off)
        "e2e_p50_baseline_over_llmq": ratio(
            base["e2e_all_accepted_lower_bound_ms"]["p50"], llmq["e2e_all_accepted_lower_bound_ms"]["p50"]
        ),
    }


# --- Markdown -------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _pcts(p: dict[str, Any]) -> str:
    return " / ".join(_fmt(p[k]) for k in ("p50", "p95", "p99"))


THROUGHPUT = "throughput, first submit to last done (jobs/s)"
STEADY = "steady throughput, p10-p90 of completions (jobs/s)"
IN_FLIGHT = "peak in-flight provider calls"
E2E = "end-to-end p50/p95/p99 (ms), completed jobs"
E2E_ALL = "end-to-end, all accepted, unfinished counted at cut-off (ms)"


def _rows(fig: dict[str, Any]) -> list[tuple[str, str]]:
    j = fig["jobs"]
    provider = fig["provider_call_ms"]
    machine = fig["machine"]
    return [
        (
            "jobs offered / accepted (202) / unanswered / created unacknowledged",
            f"{_fmt(j['offered'])} / {_fmt(j['accepted'])} / {_fmt(j.get('unanswered'))}"
            f" / {_fmt(j['created_unacknowledged'])}",
        ),
        ("completed / failed / lost", f"{_fmt(j['completed'])} / {_fmt(j['failed'])} / {_fmt(j['lost'])}"),
        ("offered rate (jobs/s)", _fmt(fig["offered_rate"])),
        ("submit latency p50/p95/p99 (ms)", _pcts(fig["submit_latency_ms"])),
        (E2E, _pcts(fig["e2e_latency_ms"])),
        (E2E_ALL, "-" if fig["submit_only"] else _pcts(fig["e2e_all_accepted_lower_bound_ms"])),
        ("queue overhead p50/p95/p99 (ms)", _pcts(fig["queue_overhead_ms"])),
        ("- pickup: created to call start", _pcts(fig["pickup_ms"])),
        ("- call end to webhook received", _pcts(fig["result_to_webhook_ms"])),
        ("provider call p50/p99 (ms)", f"{_fmt(provider['p50'])} / {_fmt(provider['p99'])}"),
        (IN_FLIGHT, _fmt(fig["peak_in_flight"])),
        (THROUGHPUT, _fmt(fig["throughput_jobs_s"])),
        (STEADY, _fmt(fig["steady_throughput_jobs_s"])),
        ("CPU-ms per job, all groups", _fmt(fig["cpu"]["total"]["cpu_ms_per_job"])),
        ("worker host peak RSS (MiB)", _fmt(fig["worker_host_peak_rss_mib"])),
        ("peak connections to the bench database", _fmt(fig["peak_db_connections"])),
        (
            "machine busy cores (not the bench's)",
            f"{_fmt(machine['busy_cores'])} ({_fmt(machine['outside_bench_cores'])})",
        ),
    ]


def markdown(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    phases = doc["phases"]
    names = list(phases)
    with_ratio = "ratios" in doc
    m = doc["machine"]
    lines = [
        f"### llmq bench, {m['at']}",
        "",
        f"`{cfg['command']}`",
        "",
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_gib']} GiB; load average "
        f"{m['loadavg'][0]:.2f} at start, {m.get('loadavg_after', [0.0])[0]:.2f} at end. "
        f"Simulator latency {cfg['latency']} s +/- {cfg['jitter']} s; llmq: {cfg['workers']} x "
        f"`-P {cfg['pool']} -c {cfg['worker_concurrency']}`, API {cfg['api_workers']} gunicorn workers.",
        "",
        "| metric | " + " | ".join(names) + (" | llmq / baseline |" if with_ratio else " |"),
        "| --- | " + " | ".join("---" for _ in names) + (" | --- |" if with_ratio else " |"),
    ]
    ratio_for: dict[str, str] = {}
    if with_ratio:
        r = doc["ratios"]
        ratio_for = {
            IN_FLIGHT: f"x {_fmt(r['peak_in_flight'])}",
            THROUGHPUT: f"x {_fmt(r['throughput'])}",
            STEADY: f"x {_fmt(r['steady_throughput'])}",
            E2E_ALL: f"p50: baseline is x {_fmt(r['e2e_p50_baseline_over_llmq'])} longer",
        }
    per_phase = [dict(_rows(phases[n])) for n in names]
    for label, _ in _rows(phases[names[0]]):
        cells = [p[label] for p in per_phase]
        if with_ratio:
            cells.append(ratio_for.get(label, ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "By process group: CPU-ms per completed job, cores used on average over the window, peak RSS "
        "(sum of VmRSS) and peak anonymous RSS (MiB):",
        "",
    ]
    lines.append(
        "| group | " + " | ".join(f"{n} CPU-ms/job | {n} cores | {n} RSS | {n} anon" for n in names) + " |"
    )
    lines.append("| --- | " + " | ".join("--- | --- | --- | ---" for _ in names) + " |")
    for group in [*GROUP_ORDER, "total", "postgres_cluster", "worker_host"]:
        cells = []
        for n in names:
            g = phases[n]["cpu"].get(group)
            if g is None:
                cells.append("- | - | - | -")
            else:
                cells.append(
                    f"{_fmt(g['cpu_ms_per_job'])} | {_fmt(g['cores'])} | {_fmt(g['peak_rss_mib'])} "
                    f"| {_fmt(g['peak_anon_mib'])}"
                )
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    notes = []
    for n in names:
        fig = phases[n]
        if fig["timed_out"]:
            what = "wait timed out"
            if fig["cutoff_s"]:
                what = f"cut off {fig['cutoff_s']:.0f} s after its first submit"
            notes.append(f"- {n}: {what}; {fig['jobs']['lost']} accepted jobs were not final.")
        if fig["submit_only"]:
            notes.append(f"- {n}: submit path only (no LLM worker): the jobs stay queued.")
    if notes:
        lines += ["", *notes]
    lines += [
        "",
        "postgres: backends of the bench database and the cluster's shared processes; postgres_cluster: "
        "every postgres process, other databases' load included. total: the groups above it. worker_host: "
        "llm_worker + webhook_worker + beat, sampled together.",
    ]
    return "\n".join(lines)
