"""gunicorn settings for the API (``llmq api`` passes ``-c python:llmq.api.gunicorn_conf``).

gthread workers: each request is short (a few database statements and one broker publish), so
a few processes with a handful of threads each keep both cores busy without many connections.
"""

import os

bind = f"{os.environ.get('LLMQ_API_HOST', '127.0.0.1')}:{os.environ.get('LLMQ_API_PORT', '8000')}"
workers = int(os.environ.get("LLMQ_API_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("LLMQ_API_THREADS", "8"))
keepalive = 5
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
