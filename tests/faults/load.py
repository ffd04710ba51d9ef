"""A bounded load generator: ``n`` submits at a paced rate from a thread pool over real HTTP,
every answer recorded (status code and body). Never an open-ended loop: ``n`` requests at most,
and none started after the deadline."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

ACCEPTED = (200, 202)  # 202 created, 200 an idempotent replay of the first job


@dataclass(frozen=True)
class Submission:
    index: int
    status: int | None  # None: no HTTP answer at all (connection error, timeout, not sent)
    body: Any
    error: str | None
    sent_at: float  # time.time() when the request went out
    elapsed_s: float

    @property
    def accepted(self) -> bool:
        return self.status in ACCEPTED

    @property
    def job_id(self) -> str | None:
        if self.accepted and isinstance(self.body, dict):
            return self.body.get("id")
        return None

    @property
    def error_type(self) -> str | None:
        """``error.type`` of a JSON error answer, else None."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return self.body["error"].get("type")
        return None


@dataclass
class SubmitReport:
    results: list[Submission] = field(default_factory=list)
    started_at: float = 0.0
    ended_at: float = 0.0

    @property
    def offered(self) -> int:
        return len(self.results)

    @property
    def accepted(self) -> list[Submission]:
        return [r for r in self.results if r.accepted]

    @property
    def refused(self) -> list[Submission]:
        return [r for r in self.results if not r.accepted]

    @property
    def accepted_ids(self) -> list[str]:
        """Distinct ids of accepted jobs, in submission order."""
        seen: dict[str, None] = {}
        for r in self.results:
            if r.job_id:
                seen.setdefault(r.job_id, None)
        return list(seen)

    def by_status(self) -> dict[str, int]:
        return dict(Counter(str(r.status) for r in self.results))


def run_load(
    api_url: str,
    api_key: str,
    n: int,
    *,
    rate_per_s: float,
    model: str,
    webhook_url: str | None,
    label: str,
    idempotency_key: str | None = None,
    concurrency: int = 16,
    deadline_s: float | None = None,
    barrier: bool = False,
    request_timeout_s: float = 15.0,
) -> SubmitReport:
    """POST ``n`` jobs, request ``i`` no earlier than ``i / rate_per_s`` after the start.

    With ``barrier`` every thread first opens its connection, then all send at the same instant
    (``concurrency`` must be at least ``n``). With an ``idempotency_key`` every request carries it and
    the same body."""
    if barrier and concurrency < n:
        raise ValueError("a barrier needs one thread per request")
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()
    gate = threading.Barrier(n) if barrier else None
    headers = {"Authorization": f"Bearer {api_key}"}
    budget = deadline_s if deadline_s is not None else n / rate_per_s + 60.0

    def client() -> httpx.Client:
        existing = getattr(local, "client", None)
        if existing is None:
            existing = httpx.Client(
                base_url=api_url, headers=headers, timeout=httpx.Timeout(request_timeout_s, connect=5.0)
            )
            local.client = existing
            with lock:
                clients.append(existing)
        return existing

    started_mono = time.monotonic()
    deadline = started_mono + budget

    def one(i: int) -> Submission:
        body: dict[str, Any] = {
            "prompt": f"{label}: a job" if idempotency_key else f"{label}: job {i}",
            "model": model,
            "max_tokens": 16,
        }
        if webhook_url:
            body["webhook_url"] = webhook_url
        extra = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        http = client()
        if gate is not None:
            try:
                http.get("/health")  # the connection is open before the gate opens
            except httpx.HTTPError:
                pass
            gate.wait(timeout=30)
        else:
            delay = started_mono + i / rate_per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        sent = time.time()
        if time.monotonic() > deadline:
            return Submission(i, None, None, "not sent: the load's deadline passed", sent, 0.0)
        t0 = time.monotonic()
        try:
            response = http.post("/v1/jobs", json=body, headers=extra)
        except httpx.HTTPError as exc:
            return Submission(i, None, None, f"{type(exc).__name__}: {exc}", sent, time.monotonic() - t0)
        try:
            parsed: Any = response.json()
        except ValueError:
            parsed = response.text[:500]
        return Submission(i, response.status_code, parsed, None, sent, time.monotonic() - t0)

    report = SubmitReport(started_at=time.time())
    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="load") as pool:
            report.results = list(pool.map(one, range(n)))
    finally:
        for c in clients:
            c.close()
    report.ended_at = time.time()
    return report
