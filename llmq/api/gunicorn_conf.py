"""gunicorn settings for the API (``llmq api`` passes ``-c python:llmq.api.gunicorn_conf``).

gthread workers: each request is short (a few database statements and one broker publish), so
a few processes with a handful of threads each keep both cores busy without many connections.
The exception is ``/v1/chat/completions``, which waits for its job (or streams it) on its thread:
at most ``LLMQ_CHAT_MAX_WAITING`` threads of a process wait so (``api/chat.py``), the others stay
free for short requests; raise ``LLMQ_API_THREADS`` with it for many concurrent chat callers. A
long wait does not trip ``timeout``: a gthread worker's heartbeat comes from its main loop, not
from the threads serving requests.

Keep-alive: an idle connection is kept ``keepalive`` seconds (``LLMQ_API_KEEPALIVE_S``, 75 as
nginx does, above the idle timeouts of the usual clients and load balancers: aiohttp 15 s, httpx
5 s, AWS ALB 60 s). The server must be the side that waits longer: when it closes an idle
connection at the moment a client reuses it, the client's request meets a closed socket and
gets no answer (a 202 it never sees). With gunicorn's old 5 s, a client whose pool kept a
connection idle for about 5 s lost requests that way (issue 13); idle keep-alive connections
cost the gthread worker nothing but a socket in its poller. Clients that never expire idle
connections (urllib3/requests) should still retry a connection error with the same
``Idempotency-Key``, which makes the retry safe.
"""

import os
import secrets

# The /ui session cookie is signed with LLMQ_UI_SECRET_KEY; when it is unset, one random key is
# made here, in the master, so that every worker of this `llmq api` shares it (a restart logs
# people out). llmq/api/ui_session.py reads it.
if not os.environ.get("LLMQ_UI_SECRET_KEY"):
    os.environ.setdefault("LLMQ_UI_GENERATED_SECRET", secrets.token_urlsafe(32))

bind = f"{os.environ.get('LLMQ_API_HOST', '127.0.0.1')}:{os.environ.get('LLMQ_API_PORT', '8000')}"
workers = int(os.environ.get("LLMQ_API_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("LLMQ_API_THREADS", "8"))
keepalive = int(os.environ.get("LLMQ_API_KEEPALIVE_S", "75"))
timeout = 60
graceful_timeout = 20
accesslog = None


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    # The app is loaded: keep its ~300,000 startup objects out of every full garbage collection
    # (a full collection walking them stops the worker for a few hundred milliseconds).
    from llmq.heap import keep_startup_heap_out_of_gc

    keep_startup_heap_out_of_gc()


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
