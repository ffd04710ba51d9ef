"""The provider simulator's HTTP server: OpenAI Chat Completions and Anthropic Messages, plain and
streaming, with scripted faults, on aiohttp.

Tests, benchmarks and the embedded default point the official ``openai``/``anthropic`` SDKs at it
(``base_url=http://host:port/v1`` for OpenAI, ``http://host:port`` for Anthropic), so the code
paths are the production ones. It is built to hold thousands of slow requests on a small box: one
event loop, no access log, answers built from a few small dicts, waits done with timers.

Routes::

    POST /v1/chat/completions   OpenAI (Authorization: Bearer <key>)
    POST /v1/messages           Anthropic (x-api-key, anthropic-version)
    /v1/files, /v1/batches, /v1/messages/batches: the batch APIs (``batches.py``,
                                ``anthropic_batches.py``)
    POST /_sim/script  POST /_sim/reset  GET /_sim/stats  POST /_sim/stats/reset  /_sim/batches
    GET  /_sim/requests?model=M&since=T  GET /_sim/health

A provider request goes: read body -> count it -> auth -> validate -> take the model's scripted
step -> fault or answer. Invalid requests are counted but do not consume a scripted step.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Self

import structlog
from aiohttp import web

from llmq.simulator import anthropic_batches, batches, faults, surface, surface_wire, text
from llmq.simulator.faults import FaultScripts, ScriptError, SimStats, Step
from llmq.simulator.text import InvalidRequest, ParsedRequest, dumps, new_id
from llmq.simulator.usage import PromptCache

logger = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT_S = 1.0
BACKLOG = 4096
_OPENAI, _ANTHROPIC = "openai", "anthropic"


@dataclass
class SimulatorConfig:
    """How normal answers behave; faults come from the per-model scripts."""

    latency_s: float = 0.05  # mean latency of a normal answer
    jitter_s: float = 0.0  # uniform ± jitter
    reply_words: int = 12  # words in a normal reply (capped by max_tokens)
    seed: int | None = None  # seeds the jitter
    prompt_cache_min_tokens: int = 1024  # shorter prefixes are never cached (see usage.py)
    prompt_cache_ttl_s: float = 300.0


class _State:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.scripts = FaultScripts()
        self.stats = SimStats()
        self.prompt_cache = PromptCache(config.prompt_cache_min_tokens, config.prompt_cache_ttl_s)

    def latency(self, step: Step | None, header: str | None) -> float:
        """Scripted step latency, else the ``x-sim-latency`` header, else config ± jitter."""
        if step is not None and step.latency is not None:
            return step.latency
        if header:
            with contextlib.suppress(ValueError):
                return max(float(header), 0.0)
        base = self.config.latency_s
        if self.config.jitter_s:
            base += self.rng.uniform(-self.config.jitter_s, self.config.jitter_s)
        return max(base, 0.0)


STATE = web.AppKey("llmq_simulator_state", _State)
BATCHES = web.AppKey("llmq_simulator_batches", batches.BatchStore)


class _Outcome:
    """The status a request ended with; stays 499 if the client leaves first."""

    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = faults.STATUS_CLIENT_GONE


def _json(outcome: _Outcome, status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    outcome.status = status
    return web.Response(status=status, text=dumps(body), content_type="application/json", headers=headers)


def _error(
    api: str,
    outcome: _Outcome,
    status: int,
    err_type: str,
    message: str,
    code: str | None = None,
    param: str | None = None,
) -> web.Response:
    request_id = new_id("req_")
    if api == _OPENAI:
        return _json(
            outcome,
            status,
            faults.openai_error_body(message, err_type, code, param),
            {"x-request-id": request_id},
        )
    return _json(
        outcome,
        status,
        faults.anthropic_error_body(err_type, message, request_id),
        {"request-id": request_id},
    )


async def _drop(
    request: web.Request, outcome: _Outcome, response: web.StreamResponse | None = None
) -> web.StreamResponse:
    """Close the connection without (the rest of) an answer."""
    outcome.status = faults.STATUS_DROPPED
    if request.transport is not None:
        request.transport.abort()
    # With handler_cancellation=True aiohttp cancels this handler on the next loop turn; without
    # it, the answer below goes nowhere (aiohttp does not write to a closed transport).
    await asyncio.sleep(0)
    return response or web.Response(status=204)


_Handler = Callable[[web.Request, _State, Any, _Outcome], Awaitable[web.StreamResponse]]


def _provider_route(api: str, handler: _Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def route(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        model = body.get("model") if isinstance(body, dict) else None
        record = state.stats.begin(model if isinstance(model, str) else "")
        outcome = _Outcome()
        try:
            if not isinstance(body, dict):
                if api == _OPENAI:
                    return _error(
                        api,
                        outcome,
                        400,
                        "invalid_request_error",
                        "We could not parse the JSON body of your request. (HINT: "
                        "This likely means you aren't using your HTTP library "
                        "correctly.)",
                    )
                return _error(
                    api,
                    outcome,
                    400,
                    "invalid_request_error",
                    "There was an issue with your request body: it is not a valid JSON object.",
                )
            return await handler(request, state, body, outcome)
        finally:
            state.stats.end(record, outcome.status)

    return route


def _bearer(request: web.Request) -> bool:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(key.strip())


async def _openai(
    request: web.Request, state: _State, body: dict[str, Any], outcome: _Outcome
) -> web.StreamResponse:
    if not _bearer(request):
        return _error(
            _OPENAI,
            outcome,
            401,
            "invalid_request_error",
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer "
            "YOUR_KEY).",
        )
    try:
        parsed = surface.with_surface(text.parse_openai(body), surface.openai_surface(body))
    except InvalidRequest as err:
        return _error(_OPENAI, outcome, 400, "invalid_request_error", err.message, err.code, err.param)
    return await _answer(request, state, _OPENAI, parsed, outcome)


async def _anthropic(
    request: web.Request, state: _State, body: dict[str, Any], outcome: _Outcome
) -> web.StreamResponse:
    # anthropic>=2 sends the API key as a bearer token; older SDKs and curl use x-api-key.
    if not request.headers.get("x-api-key", "").strip() and not _bearer(request):
        return _error(_ANTHROPIC, outcome, 401, "authentication_error", "x-api-key header is required")
    if not request.headers.get("anthropic-version", "").strip():
        return _error(
            _ANTHROPIC, outcome, 400, "invalid_request_error", "anthropic-version: header is required"
        )
    try:
        parsed = surface.with_surface(text.parse_anthropic(body), surface.anthropic_surface(body))
    except InvalidRequest as err:
        return _error(_ANTHROPIC, outcome, 400, "invalid_request_error", err.message)
    return await _answer(request, state, _ANTHROPIC, parsed, outcome)


async def _answer(
    request: web.Request, state: _State, api: str, parsed: ParsedRequest, outcome: _Outcome
) -> web.StreamResponse:
    step = state.scripts.next_step(parsed.model)
    stop_after: int | None = None
    if step is not None and step.fault not in ("ok", "invalid_json"):
        if step.latency:
            await asyncio.sleep(step.latency)
        if step.fault == "hang":
            await asyncio.sleep(step.seconds)
            return await _drop(request, outcome)
        if step.fault == "drop" or (step.fault == "stream_drop" and not parsed.stream):
            return await _drop(request, outcome)
        if step.fault == "stream_drop":
            stop_after = step.after_words
        else:
            request_id = new_id("req_")
            status, err_body, headers = faults.fault_error(
                api, step, parsed.model, parsed.prompt_tokens, request_id
            )
            headers["x-request-id" if api == _OPENAI else "request-id"] = request_id
            return _json(outcome, status, err_body, headers)
    # The prompt is processed from here on (an answer or a stream, dropped or not): the
    # provider's prompt cache is read or written.
    cached, written = state.prompt_cache.use(api, parsed.model, parsed.cache_prefix)
    if cached or written:
        parsed = replace(parsed, cached_tokens=cached, cache_write_tokens=written)
    # A step's latency: an "ok" step's replaces the normal latency; a fault's was waited above.
    ok_step = step if step is not None and step.fault == "ok" else None
    latency = state.latency(ok_step, request.headers.get("x-sim-latency"))
    if parsed.surface is not None:
        invalid_json = step is not None and step.fault == "invalid_json"
        return await _surface_answer(request, outcome, api, parsed, state, latency, stop_after, invalid_json)
    words, cut = text.reply_words(parsed.last_user_text, state.config.reply_words, parsed.max_tokens)
    build = text.openai_stream if api == _OPENAI else text.anthropic_stream
    if parsed.stream:
        head, pieces, tail = build(parsed, words, cut)
        return await _stream(request, outcome, head, pieces, tail, latency, stop_after)
    await asyncio.sleep(latency)
    reply = " ".join(words)
    if api == _OPENAI:
        body = text.openai_completion(parsed, reply, len(words), cut)
        return _json(outcome, 200, body, {"x-request-id": new_id("req_")})
    body = text.anthropic_message(parsed, reply, len(words), cut)
    return _json(outcome, 200, body, {"request-id": new_id("req_")})


async def _surface_answer(
    request: web.Request,
    outcome: _Outcome,
    api: str,
    parsed: ParsedRequest,
    state: _State,
    latency: float,
    stop_after: int | None,
    invalid_json: bool,
) -> web.StreamResponse:
    """An answer to a request with tools, JSON output, stop, seed, n or images (``surface.py``)."""
    frames, body = surface_wire.reply(api == _OPENAI, parsed, state.config.reply_words, invalid_json)
    if frames is not None:
        return await _stream(request, outcome, *frames, latency, stop_after)
    await asyncio.sleep(latency)
    return _json(outcome, 200, body, {("x-request-id" if api == _OPENAI else "request-id"): new_id("req_")})


async def _stream(
    request: web.Request,
    outcome: _Outcome,
    head: list[bytes],
    pieces: list[bytes],
    tail: list[bytes],
    latency: float,
    stop_after: int | None,
) -> web.StreamResponse:
    """Send SSE frames, the latency spread over the word frames; abort after ``stop_after``."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    delay = latency / max(len(pieces), 1)
    if delay == 0 and stop_after is None:  # nothing to spread: the whole body in one write
        await response.write(b"".join([*head, *pieces, *tail]))
    else:
        for frame in head:
            await response.write(frame)
        if not pieces:
            await asyncio.sleep(latency)
        for i, frame in enumerate(pieces):
            if stop_after is not None and i >= stop_after:
                return await _drop(request, outcome, response)
            await asyncio.sleep(delay)
            await response.write(frame)
        if stop_after is not None:
            return await _drop(request, outcome, response)
        for frame in tail:
            await response.write(frame)
    await response.write_eof()
    outcome.status = 200
    return response


# --- control API ---------------------------------------------------------------------------


async def _read_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError as err:
        raise ScriptError(f"body is not JSON: {err}") from err


async def _script(request: web.Request) -> web.Response:
    try:
        model, n_steps = request.app[STATE].scripts.set(await _read_json(request))
    except ScriptError as err:
        return web.json_response({"error": str(err)}, status=400)
    return web.json_response({"ok": True, "model": model, "steps": n_steps})


async def _reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.scripts.clear()
    state.stats.reset()
    state.prompt_cache.clear()
    request.app[BATCHES].clear()
    return web.json_response({"ok": True})


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats.snapshot())


async def _stats_reset(request: web.Request) -> web.Response:
    request.app[STATE].stats.reset_counters()
    return web.json_response({"ok": True})


async def _requests(request: web.Request) -> web.Response:
    since: float | None = None
    if "since" in request.query:
        try:
            since = float(request.query["since"])
        except ValueError:
            return web.json_response({"error": "'since' must be a unix time"}, status=400)
    data = request.app[STATE].stats.request_log(request.query.get("model"), since)
    return web.json_response({"data": data})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def create_simulator_app(config: SimulatorConfig) -> web.Application:
    """The simulator as an aiohttp app. Run it with ``handler_cancellation=True`` (as
    :func:`run_simulator` and :class:`BackgroundSimulator` do) so that a request whose client
    left, or whose connection a fault dropped, stops counting as in flight at once."""
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[STATE] = _State(config)
    app[BATCHES] = batches.BatchStore()
    app.router.add_post("/v1/chat/completions", _provider_route(_OPENAI, _openai))
    app.router.add_post("/v1/messages", _provider_route(_ANTHROPIC, _anthropic))
    batches.openai_routes(app, STATE, BATCHES)  # the batch APIs: simulator/batches.py
    anthropic_batches.anthropic_routes(app, STATE, BATCHES)
    batches.control_routes(app, BATCHES)
    app.router.add_post("/_sim/script", _script)
    app.router.add_post("/_sim/reset", _reset)
    app.router.add_get("/_sim/stats", _stats)
    app.router.add_post("/_sim/stats/reset", _stats_reset)
    app.router.add_get("/_sim/requests", _requests)
    app.router.add_get("/_sim/health", _health)
    return app


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=BACKLOG, reuse_address=True)
    await site.start()
    return runner, runner.addresses[0][1]


def run_simulator(host: str = "127.0.0.1", port: int = 8100, config: SimulatorConfig | None = None) -> None:
    """Serve in the foreground until SIGINT or SIGTERM, then shut down cleanly."""

    async def serve() -> None:
        runner, bound = await _start(create_simulator_app(config or SimulatorConfig()), host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        logger.info("simulator_listening", url=f"http://{host}:{bound}")
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            logger.info("simulator_stopped")

    asyncio.run(serve())


class BackgroundSimulator:
    """The simulator on its own event loop in a daemon thread (tests, the embedded default).

    ``with BackgroundSimulator(port=0) as sim: ...`` then ``sim.url``, ``sim.port``.
    """

    def __init__(self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SimulatorConfig()
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="llmq-simulator", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        app = create_simulator_app(self.config)
        future = asyncio.run_coroutine_threadsafe(_start(app, self.host, self.port), self._loop)
        self._runner, self.port = future.result(timeout=10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(
                timeout=SHUTDOWN_TIMEOUT_S + 10
            )
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m llmq.simulator [--host H] [--port P] [--latency S] ...``"""
    parser = argparse.ArgumentParser(
        prog="python -m llmq.simulator", description="OpenAI/Anthropic provider simulator"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument(
        "--latency",
        type=float,
        default=SimulatorConfig.latency_s,
        help="mean latency of a normal answer, seconds",
    )
    parser.add_argument(
        "--jitter",
        type=float,
        default=SimulatorConfig.jitter_s,
        help="uniform +/- jitter on the latency, seconds",
    )
    parser.add_argument("--reply-words", type=int, default=SimulatorConfig.reply_words)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--prompt-cache-min-tokens",
        type=int,
        default=SimulatorConfig.prompt_cache_min_tokens,
        help="prompt prefixes of fewer tokens are never served from the simulated prompt cache",
    )
    args = parser.parse_args(argv)
    config = SimulatorConfig(
        latency_s=args.latency,
        jitter_s=args.jitter,
        reply_words=args.reply_words,
        seed=args.seed,
        prompt_cache_min_tokens=args.prompt_cache_min_tokens,
    )
    run_simulator(args.host, args.port, config)
