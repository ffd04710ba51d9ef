"""The provider simulator, driven over real HTTP by the official ``openai`` and ``anthropic`` SDKs.

One simulator per module runs on a free loopback port in a background thread; each test uses its
own model names, so scripts and per-model counters never collide.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from llmq.simulator import BackgroundSimulator, SimulatorConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Tell me about durable queues please"
OAI_USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]
CLAUDE_USER: list[MessageParam] = [{"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def sim() -> Iterator[BackgroundSimulator]:
    with BackgroundSimulator(SimulatorConfig(latency_s=0.02, reply_words=12, seed=1)) as server:
        yield server


@pytest.fixture
def oai(sim: BackgroundSimulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(sim: BackgroundSimulator) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=sim.url, api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture
def model() -> str:
    return f"sim-{uuid.uuid4().hex[:10]}"


def script(
    sim: BackgroundSimulator, model: str, steps: list[dict[str, Any]], default: dict[str, Any] | None = None
) -> None:
    response = httpx2.post(
        f"{sim.url}/_sim/script", json={"model": model, "steps": steps, "default": default}
    )
    assert response.status_code == 200, response.text


def stats(sim: BackgroundSimulator) -> dict[str, Any]:
    snapshot: dict[str, Any] = httpx2.get(f"{sim.url}/_sim/stats").json()
    return snapshot


def test_openai_answer_is_a_chat_completion_with_usage(oai: openai.OpenAI, model: str) -> None:
    completion = oai.chat.completions.create(model=model, messages=OAI_USER)
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion" and completion.model == model
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content is not None
    assert choice.message.content.startswith("Simulated answer to: Tell me about durable")
    assert len(choice.message.content.split()) == 12
    assert completion.usage is not None
    # ceil(35 chars / 4) + 3 = 12 prompt tokens; one completion token per word
    assert completion.usage.prompt_tokens == 12
    assert completion.usage.completion_tokens == 12 and completion.usage.total_tokens == 24


def test_openai_max_tokens_cuts_the_reply_with_length(oai: openai.OpenAI, model: str) -> None:
    completion = oai.chat.completions.create(model=model, messages=OAI_USER, max_completion_tokens=4)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "Simulated answer to: Tell"
    assert completion.usage is not None and completion.usage.completion_tokens == 4


def test_openai_stream_sends_one_chunk_per_word_then_usage(oai: openai.OpenAI, model: str) -> None:
    stream = oai.chat.completions.create(
        model=model, messages=OAI_USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    words = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert len(words) == 12
    assert "".join(words).startswith("Simulated answer to: Tell")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == 12
    assert {c.id for c in chunks} == {chunks[0].id}


def test_openai_stream_without_include_usage_ends_with_length(oai: openai.OpenAI, model: str) -> None:
    chunks = list(oai.chat.completions.create(model=model, messages=OAI_USER, stream=True, max_tokens=3))
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Simulated answer to:"


def test_a_stream_at_zero_latency_is_the_same_frames_in_one_write(
    oai: openai.OpenAI, claude: anthropic.Anthropic, sim: BackgroundSimulator, model: str
) -> None:
    script(sim, model, [{"fault": "ok", "latency": 0}, {"fault": "ok", "latency": 0}])
    chunks = list(oai.chat.completions.create(model=model, messages=OAI_USER, stream=True))
    assert [c.choices[0].delta.role for c in chunks if c.choices[0].delta.role] == ["assistant"]
    assert len([c for c in chunks if c.choices[0].delta.content]) == 12
    events = [
        e.type for e in claude.messages.create(model=model, max_tokens=100, messages=CLAUDE_USER, stream=True)
    ]
    assert events.count("message_start") == 1 and events.count("content_block_delta") == 12
    assert events[-1] == "message_stop"


def test_anthropic_answer_is_a_message_with_usage(claude: anthropic.Anthropic, model: str) -> None:
    message = claude.messages.create(model=model, max_tokens=100, system="Be brief.", messages=CLAUDE_USER)
    assert message.id.startswith("msg_") and message.type == "message"
    assert message.role == "assistant" and message.model == model
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    block = message.content[0]
    assert block.type == "text" and block.text.startswith("Simulated answer to: Tell me")
    # system ceil(9/4)+3 = 6, user 12: the same count an OpenAI system message would give
    assert message.usage.input_tokens == 18 and message.usage.output_tokens == 12


def test_anthropic_max_tokens_cuts_the_reply(claude: anthropic.Anthropic, model: str) -> None:
    message = claude.messages.create(model=model, max_tokens=2, messages=CLAUDE_USER)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 2
    assert message.content[0].type == "text" and message.content[0].text == "Simulated answer"


def test_anthropic_stream_sends_the_real_event_sequence(claude: anthropic.Anthropic, model: str) -> None:
    events = list(claude.messages.create(model=model, max_tokens=5, stream=True, messages=CLAUDE_USER))
    kinds = [e.type for e in events]  # the SDK skips "ping"
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 5,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[-2].type == "message_delta"
    assert events[-2].delta.stop_reason == "max_tokens" and events[-2].usage.output_tokens == 5
    with claude.messages.stream(model=model, max_tokens=100, messages=CLAUDE_USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith("Simulated answer to: Tell") and len(text.split()) == 12
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 12
    assert final.usage.input_tokens == 12


def test_rate_limited_twice_then_answers_with_retry_after(
    sim: BackgroundSimulator, oai: openai.OpenAI, model: str
) -> None:
    script(sim, model, [{"fault": "429", "retry_after": 1.5, "retry_after_ms": 1500}] * 2)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            oai.chat.completions.create(model=model, messages=OAI_USER)
        assert caught.value.response.headers["retry-after"] == "2"
        assert caught.value.response.headers["retry-after-ms"] == "1500"
        assert caught.value.code == "rate_limit_exceeded"
    assert oai.chat.completions.create(model=model, messages=OAI_USER)


def test_anthropic_rate_limit_uses_anthropic_error_format(
    sim: BackgroundSimulator, claude: anthropic.Anthropic, model: str
) -> None:
    script(sim, model, [{"fault": "429", "retry_after": 3}])
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.create(model=model, max_tokens=10, messages=CLAUDE_USER)
    assert caught.value.type == "rate_limit_error"
    assert caught.value.response.headers["retry-after"] == "3"
    assert "retry-after-ms" not in caught.value.response.headers
    assert caught.value.request_id and caught.value.request_id.startswith("req_")


def test_server_errors_map_to_each_sdks_classes(
    sim: BackgroundSimulator, oai: openai.OpenAI, claude: anthropic.Anthropic, model: str
) -> None:
    script(
        sim, model, [{"fault": "529"}, {"fault": "500"}, {"fault": "503"}, {"fault": "529"}, {"fault": "500"}]
    )
    expected = [
        (anthropic.OverloadedError, 529, "overloaded_error"),
        (anthropic.InternalServerError, 500, "api_error"),
        (anthropic.ServiceUnavailableError, 503, "api_error"),
    ]
    for cls, status, err_type in expected:
        with pytest.raises(cls) as caught:
            claude.messages.create(model=model, max_tokens=10, messages=CLAUDE_USER)
        assert caught.value.status_code == status and caught.value.type == err_type
    for status in (529, 500):
        with pytest.raises(openai.InternalServerError) as oai_caught:
            oai.chat.completions.create(model=model, messages=OAI_USER)
        assert oai_caught.value.status_code == status
        assert oai_caught.value.type == "server_error"


def test_scripted_bad_requests(
    sim: BackgroundSimulator, oai: openai.OpenAI, claude: anthropic.Anthropic, model: str
) -> None:
    script(
        sim,
        model,
        [
            {"fault": "400", "code": "context_length_exceeded"},
            {"fault": "400", "code": "context_length_exceeded"},
            {"fault": "400", "code": "content_policy_violation", "message": "nope"},
            {"fault": "401"},
            {"fault": "404"},
            {"fault": "401"},
            {"fault": "404"},
        ],
    )
    with pytest.raises(openai.BadRequestError) as oai_caught:
        oai.chat.completions.create(model=model, messages=OAI_USER)
    assert oai_caught.value.code == "context_length_exceeded"
    assert oai_caught.value.type == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=model, max_tokens=10, messages=CLAUDE_USER)
    assert caught.value.api_message is not None
    assert caught.value.api_message.startswith("prompt is too long")
    with pytest.raises(openai.BadRequestError) as oai_caught:
        oai.chat.completions.create(model=model, messages=OAI_USER)
    assert oai_caught.value.code == "content_policy_violation"
    assert oai_caught.value.message.endswith("nope")
    with pytest.raises(openai.AuthenticationError):
        oai.chat.completions.create(model=model, messages=OAI_USER)
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model=model, messages=OAI_USER)
    with pytest.raises(anthropic.AuthenticationError):
        claude.messages.create(model=model, max_tokens=10, messages=CLAUDE_USER)
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model=model, max_tokens=10, messages=CLAUDE_USER)


def test_hang_times_out_on_the_client_and_frees_the_slot(
    sim: BackgroundSimulator, oai: openai.OpenAI, claude: anthropic.Anthropic, model: str
) -> None:
    script(sim, model, [{"fault": "hang", "seconds": 3600}] * 2)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        oai.with_options(timeout=0.5).chat.completions.create(model=model, messages=OAI_USER)
    with pytest.raises(anthropic.APITimeoutError):
        claude.with_options(timeout=0.5).messages.create(model=model, max_tokens=10, messages=CLAUDE_USER)
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while stats(sim)["in_flight_by_model"].get(model) and time.monotonic() < deadline:
        time.sleep(0.02)
    statuses = [
        r["status"] for r in httpx2.get(f"{sim.url}/_sim/requests", params={"model": model}).json()["data"]
    ]
    assert statuses == [499, 499]  # the client left first


def test_drop_closes_the_connection_without_answer(
    sim: BackgroundSimulator, oai: openai.OpenAI, claude: anthropic.Anthropic, model: str
) -> None:
    # stream_drop on a plain request behaves like drop
    script(sim, model, [{"fault": "drop"}, {"fault": "drop"}, {"fault": "stream_drop"}])
    with pytest.raises(openai.APIConnectionError) as caught:
        oai.chat.completions.create(model=model, messages=OAI_USER)
    assert not isinstance(caught.value, openai.APITimeoutError)
    with pytest.raises(anthropic.APIConnectionError):
        claude.messages.create(model=model, max_tokens=10, messages=CLAUDE_USER)
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model=model, messages=OAI_USER)
    assert stats(sim)["requests_by_model"][model] == 3


def test_stream_drop_breaks_streams_after_some_words(
    sim: BackgroundSimulator, oai: openai.OpenAI, claude: anthropic.Anthropic, model: str
) -> None:
    script(sim, model, [{"fault": "stream_drop", "after_words": 3}] * 2)
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in oai.chat.completions.create(model=model, messages=OAI_USER, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Simulated answer to:"
    texts: list[str] = []
    # anthropic's Stream lets the transport error through as it is
    with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)):
        for event in claude.messages.create(model=model, max_tokens=50, stream=True, messages=CLAUDE_USER):
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                texts.append(event.delta.text)
    assert "".join(texts) == "Simulated answer to:"


def test_default_step_applies_after_the_steps_and_scripts_replace(
    sim: BackgroundSimulator, oai: openai.OpenAI, model: str
) -> None:
    script(sim, model, [{"fault": "ok"}], default={"fault": "500"})
    assert oai.chat.completions.create(model=model, messages=OAI_USER)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            oai.chat.completions.create(model=model, messages=OAI_USER)
    script(sim, model, [])
    assert oai.chat.completions.create(model=model, messages=OAI_USER)


def test_latency_comes_from_the_step_or_the_header(
    sim: BackgroundSimulator, oai: openai.OpenAI, model: str
) -> None:
    script(sim, model, [{"fault": "ok", "latency": 0.3}])
    started = time.monotonic()
    oai.chat.completions.create(model=model, messages=OAI_USER)
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    list(
        oai.chat.completions.create(
            model=model, messages=OAI_USER, stream=True, extra_headers={"x-sim-latency": "0.3"}
        )
    )
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": OAI_USER}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "bogus", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "m", "messages": OAI_USER, "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": OAI_USER, "max_completion_tokens": "9"}, "max_completion_tokens"),
        ({"model": "m", "messages": OAI_USER, "temperature": 2.5}, "temperature"),
        ({"model": "m", "messages": OAI_USER, "stream": "yes"}, "stream"),
    ],
)
def test_openai_rejects_invalid_requests(sim: BackgroundSimulator, body: dict[str, Any], param: str) -> None:
    response = httpx2.post(f"{sim.url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer x"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}


def test_anthropic_rejects_system_role_and_out_of_range_values(
    claude: anthropic.Anthropic, model: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(
            model=model, max_tokens=10, messages=[{"role": "system", "content": "x"}, *CLAUDE_USER]
        )
    assert caught.value.type == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError):
        # anthropic 2.x has no `temperature` argument: llmq sends it in the body like this
        claude.messages.create(
            model=model, max_tokens=10, extra_body={"temperature": 1.5}, messages=CLAUDE_USER
        )
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=model, max_tokens=10, messages=[])


def test_raw_requests_need_auth_version_and_max_tokens(sim: BackgroundSimulator) -> None:
    body = {"model": "m", "messages": OAI_USER}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    missing_max = httpx2.post(f"{sim.url}/v1/messages", json=body, headers=headers)
    assert missing_max.status_code == 400
    assert missing_max.json()["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }
    with_max = {**body, "max_tokens": 5}
    no_version = httpx2.post(f"{sim.url}/v1/messages", json=with_max, headers={"x-api-key": "k"})
    assert no_version.status_code == 400
    no_key = httpx2.post(f"{sim.url}/v1/messages", json=with_max, headers={"anthropic-version": "2023-06-01"})
    assert no_key.status_code == 401 and no_key.json()["type"] == "error"
    assert no_key.json()["error"]["type"] == "authentication_error"
    assert httpx2.post(f"{sim.url}/v1/messages", json=with_max, headers=headers).status_code == 200
    no_bearer = httpx2.post(f"{sim.url}/v1/chat/completions", json=body)
    assert no_bearer.status_code == 401 and set(no_bearer.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    not_json = httpx2.post(
        f"{sim.url}/v1/chat/completions", content=b"{", headers={"Authorization": "Bearer x"}
    )
    assert not_json.status_code == 400


def test_stats_count_every_request_and_peak_concurrency(
    sim: BackgroundSimulator, oai: openai.OpenAI, model: str
) -> None:
    async def burst() -> None:
        async with openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0) as client:
            await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model=model, messages=OAI_USER, extra_headers={"x-sim-latency": "0.5"}
                    )
                    for _ in range(20)
                )
            )

    script(sim, model, [{"fault": "429"}])
    invalid = httpx2.post(
        f"{sim.url}/v1/chat/completions",
        json={"model": model, "messages": []},
        headers={"Authorization": "Bearer x"},
    )
    assert invalid.status_code == 400  # counted, and it does not use up the scripted step
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model=model, messages=OAI_USER)
    started = time.time()
    asyncio.run(burst())

    snapshot = stats(sim)
    assert snapshot["requests_by_model"][model] == 22
    assert snapshot["peak_in_flight_by_model"][model] == 20
    assert model not in snapshot["in_flight_by_model"]
    assert snapshot["peak_in_flight"] >= 20
    assert snapshot["responses_by_status"]["200"] >= 20
    assert snapshot["responses_by_status"]["429"] >= 1
    records = httpx2.get(f"{sim.url}/_sim/requests", params={"model": model}).json()["data"]
    assert sorted(r["status"] for r in records) == [200] * 20 + [400, 429]
    burst_records = [r for r in records if r["status"] == 200]
    assert all(r["started_at"] >= started - 0.01 for r in burst_records)
    assert all(r["ended_at"] - r["started_at"] >= 0.49 for r in burst_records)
    since = httpx2.get(f"{sim.url}/_sim/requests", params={"model": model, "since": started})
    assert len(since.json()["data"]) == 20


def test_control_api_resets_and_rejects_bad_scripts(
    sim: BackgroundSimulator, oai: openai.OpenAI, model: str
) -> None:
    assert httpx2.get(f"{sim.url}/_sim/health").json() == {"ok": True}
    bad = httpx2.post(f"{sim.url}/_sim/script", json={"model": model, "steps": [{"fault": "x"}]})
    assert bad.status_code == 400 and "unknown fault" in bad.json()["error"]
    assert httpx2.post(f"{sim.url}/_sim/script", content=b"nope").status_code == 400
    oai.chat.completions.create(model=model, messages=OAI_USER)
    assert httpx2.post(f"{sim.url}/_sim/stats/reset").json() == {"ok": True}
    snapshot = stats(sim)
    assert snapshot["requests_total"] == 0 and snapshot["requests_by_model"] == {}
    assert snapshot["peak_in_flight"] == snapshot["in_flight"] == 0
    log = httpx2.get(f"{sim.url}/_sim/requests", params={"model": model}).json()["data"]
    assert len(log) == 1  # counters only: the request log stays
    script(sim, model, [], default={"fault": "500"})
    assert httpx2.post(f"{sim.url}/_sim/reset").json() == {"ok": True}
    oai.chat.completions.create(model=model, messages=OAI_USER)  # script gone
    assert httpx2.get(f"{sim.url}/_sim/requests").json()["data"][0]["model"] == model
    assert stats(sim)["requests_total"] == 1


def test_module_entry_point_serves_until_sigterm() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "llmq.simulator", "--port", str(port), "--latency", "0", "--reply-words", "3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx2.get(f"{base}/_sim/health").status_code == 200:
                    break
            except httpx2.TransportError:
                assert time.monotonic() < deadline, "simulator did not start"
                time.sleep(0.05)
        with openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as client:
            reply = client.chat.completions.create(model="m", messages=OAI_USER)
        assert reply.choices[0].message.content == "Simulated answer to:"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
        assert process.returncode == 0, output
        assert b"simulator_listening" in output and b"simulator_stopped" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
