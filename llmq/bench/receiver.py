"""The bench's webhook receiver: one asyncio process that answers 204 and records, per job id
(the signed body's ``data.id``), when its first delivery arrived (unix seconds).

It does not verify signatures (the integration tests do): here it stands for a fast client and
must cost as little CPU as possible. Its own process keeps it off the load generator's core time.

    POST <any path>          a webhook delivery
    GET  /_bench/stats       {"received": n, "unique": n, "duplicates": n, "unparsed": n}
    GET  /_bench/arrivals    {"arrivals": {job_id: unix_seconds, ...}}

Run: ``python -m llmq.bench.receiver --port P``.
"""

from __future__ import annotations

import argparse
import json
import time

from aiohttp import web

ARRIVALS = web.AppKey("arrivals", dict)
COUNTS = web.AppKey("counts", dict)


async def _hook(request: web.Request) -> web.Response:
    at = time.time()
    body = await request.read()
    arrivals = request.app[ARRIVALS]
    counts = request.app[COUNTS]
    counts["received"] += 1
    try:
        job_id = json.loads(body)["data"]["id"]
    except (ValueError, KeyError, TypeError):
        counts["unparsed"] += 1
        return web.Response(status=204)
    if job_id in arrivals:
        counts["duplicates"] += 1
    else:
        arrivals[job_id] = at
    return web.Response(status=204)


async def _stats(request: web.Request) -> web.Response:
    counts = request.app[COUNTS]
    return web.json_response({**counts, "unique": len(request.app[ARRIVALS])})


async def _arrivals(request: web.Request) -> web.Response:
    return web.json_response({"arrivals": request.app[ARRIVALS]})


def create_app() -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[ARRIVALS] = {}
    app[COUNTS] = {"received": 0, "duplicates": 0, "unparsed": 0}
    app.router.add_get("/_bench/stats", _stats)
    app.router.add_get("/_bench/arrivals", _arrivals)
    app.router.add_post("/{tail:.*}", _hook)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmq.bench.receiver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None, print=None, backlog=4096)


if __name__ == "__main__":
    main()
