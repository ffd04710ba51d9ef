"""Fault scripts and traffic statistics of the simulator: the state behind the ``/_sim/*`` API.

Scripts are kept per model name, so that concurrent tests using different model names do not
interfere. Each request for a scripted model takes the next step; when the steps run out the
script's ``default`` step applies to every later request (``None``: a normal answer)::

    POST /_sim/script {"model": "m", "steps": [{"fault": "429", "retry_after": 1}], "default": null}
    -> 1st request for "m": 429, then normal answers

Step kinds (``fault``), all of which accept an optional ``latency`` (seconds before acting):

    ok           normal answer (``latency`` overrides the configured latency)
    429          rate limit; ``retry_after`` (s) -> ``retry-after`` header (integer, rounded up),
                 ``retry_after_ms`` -> also ``retry-after-ms``
    500 503 529  server errors (529 is Anthropic's ``overloaded_error``)
    400          invalid request; ``code``: context_length_exceeded | content_policy_violation | None,
                 ``message``: optional text
    401 404      authentication error, model not found
    hang         hold the connection ``seconds`` (default 3600) without answering, then close it
    drop         close the connection without any response
    stream_drop  streaming: send ``after_words`` (default 3) words then abort; otherwise as drop
    invalid_json a normal 200 answer, but a request for JSON output (response_format, Anthropic
                 output_config) gets broken JSON: to prove a client's check and retry

The statistics count every request that reaches a handler (faulted and invalid ones too), keep
gauges of requests in flight with their peaks, and a bounded log of request timings that tests
use to check rate limits over time windows.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

FAULT_KINDS = frozenset(
    {"ok", "429", "500", "503", "529", "400", "401", "404", "hang", "drop", "stream_drop", "invalid_json"}
)
MAX_REQUEST_RECORDS = 200_000
# Statuses recorded for requests that got no complete HTTP answer.
STATUS_DROPPED = 0  # the simulator closed the connection (drop, stream_drop, end of a hang)
STATUS_CLIENT_GONE = 499  # the client went away first (nginx's convention)


class ScriptError(ValueError):
    """A malformed ``/_sim/script`` body."""


@dataclass(frozen=True)
class Step:
    """One scripted behaviour for one request."""

    fault: str = "ok"
    latency: float | None = None
    retry_after: float | None = None
    retry_after_ms: float | None = None
    code: str | None = None
    message: str | None = None
    seconds: float = 3600.0
    after_words: int = 3

    @classmethod
    def parse(cls, raw: object) -> Step:
        if not isinstance(raw, dict):
            raise ScriptError(f"a step must be an object, got {raw!r}")
        fault = str(raw.get("fault", "ok"))
        if fault not in FAULT_KINDS:
            raise ScriptError(f"unknown fault {fault!r}; expected one of {sorted(FAULT_KINDS)}")
        code = raw.get("code")
        message = raw.get("message")
        if code is not None and not isinstance(code, str):
            raise ScriptError("'code' must be a string or null")
        if message is not None and not isinstance(message, str):
            raise ScriptError("'message' must be a string or null")
        after_words = raw.get("after_words", 3)
        if not isinstance(after_words, int) or isinstance(after_words, bool) or after_words < 0:
            raise ScriptError("'after_words' must be an integer >= 0")
        seconds = _seconds(raw, "seconds")
        return cls(
            fault=fault,
            latency=_seconds(raw, "latency"),
            retry_after=_seconds(raw, "retry_after"),
            retry_after_ms=_seconds(raw, "retry_after_ms"),
            code=code,
            message=message,
            seconds=3600.0 if seconds is None else seconds,
            after_words=after_words,
        )

    def retry_headers(self) -> dict[str, str]:
        """``retry-after`` (whole seconds, rounded up) and ``retry-after-ms`` when scripted."""
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["retry-after"] = str(math.ceil(self.retry_after))
        elif self.retry_after_ms is not None:
            headers["retry-after"] = str(math.ceil(self.retry_after_ms / 1000))
        if self.retry_after_ms is not None:
            headers["retry-after-ms"] = str(round(self.retry_after_ms))
        return headers


def _seconds(raw: dict[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ScriptError(f"{key!r} must be a number >= 0")
    return float(value)


class FaultScripts:
    """The scripts of all models: ``model -> (remaining steps, default step)``."""

    def __init__(self) -> None:
        self._scripts: dict[str, tuple[deque[Step], Step | None]] = {}

    def set(self, body: object) -> tuple[str, int]:
        """Install a script from a ``/_sim/script`` body; replaces the model's previous one."""
        if not isinstance(body, dict):
            raise ScriptError("body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ScriptError("'model' must be a non-empty string")
        raw_steps = body.get("steps") or []
        if not isinstance(raw_steps, list):
            raise ScriptError("'steps' must be a list")
        steps = deque(Step.parse(s) for s in raw_steps)
        raw_default = body.get("default")
        default = None if raw_default is None else Step.parse(raw_default)
        self._scripts[model] = (steps, default)
        return model, len(steps)

    def next_step(self, model: str) -> Step | None:
        """The step for the next request of ``model`` (``None``: answer normally)."""
        script = self._scripts.get(model)
        if script is None:
            return None
        steps, default = script
        return steps.popleft() if steps else default

    def clear(self) -> None:
        self._scripts.clear()


class RequestRecord:
    """One request's timing, as listed by ``GET /_sim/requests``."""

    __slots__ = ("ended_at", "model", "started_at", "status")

    def __init__(self, model: str, started_at: float) -> None:
        self.model = model
        self.started_at = started_at
        self.ended_at: float | None = None
        self.status: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "status": self.status,
        }


class SimStats:
    """Counters, in-flight gauges with peaks, and the bounded request log."""

    def __init__(self) -> None:
        self.records: deque[RequestRecord] = deque(maxlen=MAX_REQUEST_RECORDS)
        self.in_flight = 0
        self.in_flight_by_model: dict[str, int] = {}
        self.reset_counters()

    def reset_counters(self) -> None:
        """Zero the counters; peaks restart from what is in flight now (gauges keep counting)."""
        self.requests_total = 0
        self.requests_by_model: dict[str, int] = {}
        self.responses_by_status: dict[str, int] = {}
        self.peak_in_flight = self.in_flight
        self.peak_in_flight_by_model = {m: n for m, n in self.in_flight_by_model.items() if n}

    def reset(self) -> None:
        self.records.clear()
        self.reset_counters()

    def begin(self, model: str) -> RequestRecord:
        self.requests_total += 1
        self.requests_by_model[model] = self.requests_by_model.get(model, 0) + 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        n = self.in_flight_by_model.get(model, 0) + 1
        self.in_flight_by_model[model] = n
        if n > self.peak_in_flight_by_model.get(model, 0):
            self.peak_in_flight_by_model[model] = n
        record = RequestRecord(model, time.time())
        self.records.append(record)
        return record

    def end(self, record: RequestRecord, status: int) -> None:
        record.ended_at = time.time()
        record.status = status
        key = str(status)
        self.responses_by_status[key] = self.responses_by_status.get(key, 0) + 1
        self.in_flight -= 1
        n = self.in_flight_by_model.get(record.model, 1) - 1
        if n > 0:
            self.in_flight_by_model[record.model] = n
        else:
            self.in_flight_by_model.pop(record.model, None)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "requests_by_model": dict(self.requests_by_model),
            "responses_by_status": dict(self.responses_by_status),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "in_flight_by_model": dict(self.in_flight_by_model),
            "peak_in_flight_by_model": dict(self.peak_in_flight_by_model),
        }

    def request_log(self, model: str | None, since: float | None) -> list[dict[str, Any]]:
        return [
            r.as_dict()
            for r in self.records
            if (model is None or r.model == model) and (since is None or r.started_at >= since)
        ]


# --- what a fault looks like on the wire, per API ---------------------------------------------

_OPENAI_FAULTS: dict[str, tuple[str, str | None, str]] = {
    # fault: (error.type, error.code, error.message)
    "500": ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    "503": ("server_error", None, "The server is overloaded or not ready yet."),
    "529": ("server_error", None, "The server is currently overloaded. Please try again later."),
    "401": (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key at https://platform.openai.com.",
    ),
}
_ANTHROPIC_FAULTS: dict[str, tuple[str, str]] = {
    # fault: (error.type, error.message)
    "500": ("api_error", "Internal server error"),
    "503": ("api_error", "Service unavailable"),
    "529": ("overloaded_error", "Overloaded"),
    "401": ("authentication_error", "invalid x-api-key"),
}
CONTEXT_WINDOW = 200_000


def openai_error_body(
    message: str, err_type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def anthropic_error_body(err_type: str, message: str, request_id: str) -> dict[str, Any]:
    """Anthropic's error envelope."""
    return {"type": "error", "error": {"type": err_type, "message": message}, "request_id": request_id}


def fault_error(
    api: str, step: Step, model: str, prompt_tokens: int, request_id: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` of an error fault (429 500 503 529 400 401 404) for ``api``
    (``"openai"`` or ``"anthropic"``)."""
    status = int(step.fault)
    headers = step.retry_headers() if status == 429 else {}
    if api == "openai":
        if status == 429:
            wait = step.retry_after or (step.retry_after_ms or 0) / 1000 or 1
            body = openai_error_body(
                step.message
                or f"Rate limit reached for {model} on requests per min (RPM): "
                f"Limit 60, Used 60, Requested 1. Please try again in {wait:g}s.",
                "requests",
                "rate_limit_exceeded",
            )
        elif status == 400:
            if step.code == "context_length_exceeded":
                default = (
                    f"This model's maximum context length is {CONTEXT_WINDOW} tokens. "
                    f"However, your messages resulted in {CONTEXT_WINDOW + prompt_tokens} "
                    "tokens. Please reduce the length of the messages."
                )
                param: str | None = "messages"
            elif step.code == "content_policy_violation":
                default = (
                    "Your request was rejected as a result of our safety system. Your "
                    "prompt may contain text that is not allowed by our safety system."
                )
                param = None
            else:
                default, param = "Invalid request (simulated).", None
            body = openai_error_body(step.message or default, "invalid_request_error", step.code, param)
        elif status == 404:
            body = openai_error_body(
                step.message or f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        else:
            err_type, code, message = _OPENAI_FAULTS[step.fault]
            body = openai_error_body(step.message or message, err_type, code)
        return status, body, headers
    if status == 429:
        err_type, message = (
            "rate_limit_error",
            (
                "This request would exceed the rate limit for your organization of 50 requests per "
                "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits."
            ),
        )
    elif status == 400:
        err_type = "invalid_request_error"
        if step.code == "context_length_exceeded":
            message = (
                f"prompt is too long: {CONTEXT_WINDOW + prompt_tokens} tokens > {CONTEXT_WINDOW} maximum"
            )
        elif step.code == "content_policy_violation":
            message = step.message or "Output blocked by content filtering policy"
        else:
            message = step.message or "Invalid request (simulated)."
        return status, anthropic_error_body(err_type, message, request_id), headers
    elif status == 404:
        err_type, message = "not_found_error", f"model: {model}"
    else:
        err_type, message = _ANTHROPIC_FAULTS[step.fault]
    return status, anthropic_error_body(err_type, step.message or message, request_id), headers
