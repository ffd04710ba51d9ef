"""The bench's load generator: N ``POST /v1/jobs`` at R per second, open loop, in its own process.

A scheduler starts request *i* at ``t0 + i/R`` whether or not earlier ones were answered (each
request is its own task; the connection pool is as large as the concurrency cap), so a slow API
shows up as latency, not as a lower offered rate. With ``--burst-every S`` the same rate comes
in bursts of ``R * S`` requests every S seconds (the shape that leaves keep-alive connections
idle between bursts). It stops offering after ``--jobs`` requests or
``--max-seconds``, whichever comes first, and gives every request ``--request-timeout``.

Every prompt is different (it carries the request's number), so that no response cache serves a
job without a provider call.

Output (``--out``, JSON): the offered count, the generator's own CPU (getrusage, exact) and one
row per request: ``[i, planned, sent, answered, status, job_id, error]`` — unix seconds; status
-1 when no answer came.

Run: ``python -m llmq.bench.load --api URL --key K --jobs N --rate R --model M --out FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Any

import aiohttp


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    i: int,
    planned: float,
    rows: list[list[Any]],
) -> None:
    sent = time.time()
    status, job_id, error = -1, None, None
    try:
        payload = json.dumps({**body, "prompt": f"{body['prompt']} (request {i})"}).encode()
        async with session.post(url, data=payload, headers=headers) as response:
            raw = await response.read()
            status = response.status
        answered = time.time()
        if status in (200, 202):
            job_id = json.loads(raw)["id"]
        else:
            error = raw[:200].decode("utf-8", "replace")
    except Exception as exc:  # a failed request is a figure, not a crash
        answered = time.time()
        error = f"{type(exc).__name__}: {exc}"[:200]
    rows.append([i, planned, sent, answered, status, job_id, error])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": args.prompt, "model": args.model, "max_tokens": args.max_tokens}
    if args.webhook_url:
        body["webhook_url"] = args.webhook_url
    headers = {"Authorization": f"Bearer {args.key}", "Content-Type": "application/json"}
    url = args.api.rstrip("/") + "/v1/jobs"
    rows: list[list[Any]] = []
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks: list[asyncio.Task[None]] = []
        mono0 = loop.time() + 0.05
        epoch0 = time.time() + (mono0 - loop.time())
        offered = 0
        per_burst = max(1, round(args.rate * args.burst_every)) if args.burst_every else 0
        for i in range(args.jobs):
            # Steady: one request every 1/rate s. Bursts: rate * burst_every requests at once,
            # every burst_every s — the pool's connections then sit idle until the next burst.
            at = mono0 + (i // per_burst * args.burst_every if per_burst else i / args.rate)
            if at - mono0 > args.max_seconds:
                break
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            planned = epoch0 + (at - mono0)
            tasks.append(asyncio.create_task(_one(session, url, body, headers, i, planned, rows)))
            offered += 1
        await asyncio.gather(*tasks)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "offered": offered,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "max_rss_mib": usage.ru_maxrss / 1024,
        "rows": sorted(rows),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmq.bench.load")
    parser.add_argument("--api", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--webhook-url", default=None)
    parser.add_argument("--prompt", default="Summarise the benchmark in one sentence.")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--request-timeout", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=2000)
    parser.add_argument("--burst-every", type=float, default=0.0, help="Send in bursts this many s apart.")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    with open(args.out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
