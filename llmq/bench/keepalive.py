"""The keep-alive probe: does a client that reuses idle connections ever lose a request?

``connections`` clients each send a request, sit idle ``idle_s`` (± ``jitter_s``), and send the
next on the same keep-alive connection, ``rounds`` times. A server that closes idle connections
after about ``idle_s`` races the client's reuse: the request goes out on a socket the server is
closing and no answer comes back (aiohttp's ``ServerDisconnectedError``). Counted as unanswered.
The client's own idle expiry is set far above ``idle_s`` (as urllib3 has none, and aiohttp's is
15 s), so only the server can close a connection here.

Run: ``python -m llmq.bench.keepalive --url http://127.0.0.1:8000/health --connections 200
--idle 5 --rounds 5`` against a running API (``llmq api``; ``LLMQ_API_KEEPALIVE_S`` sets its
keep-alive).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from collections import Counter
from typing import Any

import aiohttp


async def probe(url: str, connections: int, idle_s: float, jitter_s: float, rounds: int) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=10 * idle_s + 60)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def client() -> None:
            for _ in range(rounds):
                try:
                    async with session.get(url) as response:
                        await response.read()
                        outcomes[f"http_{response.status}"] += 1
                except Exception as exc:  # the figure this probe exists for
                    outcomes[f"unanswered:{type(exc).__name__}"] += 1
                await asyncio.sleep(idle_s + random.uniform(-jitter_s, jitter_s))

        await asyncio.gather(*(client() for _ in range(connections)))
    unanswered = sum(n for kind, n in outcomes.items() if kind.startswith("unanswered"))
    return {
        "requests": sum(outcomes.values()),
        "unanswered": unanswered,
        "outcomes": dict(outcomes),
        "connections": connections,
        "idle_s": idle_s,
        "jitter_s": jitter_s,
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmq.bench.keepalive")
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--jitter", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    result = asyncio.run(probe(args.url, args.connections, args.idle, args.jitter, args.rounds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
