"""A webhook receiver that can go down and come back on the same port.

It records every raw delivery (what the sender did) and, separately, the *effects*: the first
accepted (2xx) delivery of each ``webhook-id`` — what a receiver that dedupes by ``webhook-id``
acts on. ``fail_first(path, n)`` answers 500 to the first ``n`` deliveries of every id sent to
``path``, so that retries of one event are visible to the test. Tests share one receiver and
each uses its own path.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delivery:
    webhook_id: str | None
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int
    at: float

    @property
    def accepted(self) -> bool:
        return 200 <= self.answered < 300


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


class FaultReceiver:
    def __init__(self, port: int) -> None:
        self.port = port
        self._fail_first: dict[str, int] = {}
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._seen: Counter[str] = Counter()
        self._effects: dict[str, bytes] = {}
        self._paths: dict[str, str] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def url(self, path: str = "/hooks") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> FaultReceiver:
        if self._server is not None:
            return self
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver._record(self.path, headers, body)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        deadline = time.monotonic() + 10
        while True:  # the port may still be held for a moment after a stop
            try:
                self._server = _Server(("127.0.0.1", self.port), Handler)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket: senders get 'connection refused' until :meth:`start`."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    # --- what arrived ------------------------------------------------------------------------------

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> int:
        webhook_id = headers.get("webhook-id")
        with self._lock:
            key = webhook_id or ""
            self._seen[key] += 1
            status = 500 if self._seen[key] <= self._fail_first.get(path, 0) else 204
            self._deliveries.append(Delivery(webhook_id, path, headers, body, status, time.time()))
            if status < 300 and webhook_id:
                self._effects.setdefault(webhook_id, body)
                self._paths.setdefault(webhook_id, path)
        return status

    def fail_first(self, path: str, count: int) -> None:
        with self._lock:
            self._fail_first[path] = count

    def deliveries(self, path: str | None = None) -> list[Delivery]:
        with self._lock:
            return [d for d in self._deliveries if path is None or d.path == path]

    def effects(self, path: str | None = None) -> dict[str, bytes]:
        """``webhook-id`` → body, once per id: what a deduping receiver acted on."""
        with self._lock:
            if path is None:
                return dict(self._effects)
            return {i: b for i, b in self._effects.items() if self._paths[i] == path}
