"""The full request surface of a job, end to end: submitted through the HTTP API, run by a real
worker process (streaming, as deployed), answered by the simulator through the official SDKs —
tools on both providers (and a conversation that goes on after the tool result), json_schema on
both (and a broken answer retried), stop, seed, n on OpenAI, image parts on both, the cache, and
the 422s for what a provider cannot do."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from flask.testing import FlaskClient

from llmq.models.db import Database
from llmq.models.tables import Attempt
from tests.integration.conftest import SimulatorControl, unique_model, wait_for_status

pytestmark = pytest.mark.usefixtures("worker")

LOOKUP = {
    "type": "object",
    "properties": {"sku": {"type": "string", "minLength": 3}, "quantity": {"type": "integer", "minimum": 1}},
    "required": ["sku", "quantity"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "check_stock", "description": "Stock level", "parameters": LOOKUP},
    }
]
INVOICE = {
    "type": "object",
    "properties": {
        "number": {"type": "string"},
        "total": {"type": "number", "minimum": 0},
        "lines": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["number", "total", "lines"],
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "invoice", "schema": INVOICE, "strict": True}}
PIXEL = (  # a 1x1 PNG
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKm"
    "MIQAAAABJRU5ErkJggg=="
)


def _run(client: FlaskClient, auth: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 202, response.get_json()
    done = wait_for_status(client, auth, response.get_json()["id"], {"completed", "failed"})
    assert done["status"] == "completed", done
    return done


def _attempts(database: Database, job_id: str) -> list[Attempt]:
    with database.session() as session:
        return list(session.query(Attempt).filter_by(job_id=job_id).order_by(Attempt.number))


@pytest.mark.parametrize("provider", ["openai", "anthropic", "local"])
def test_tool_call_is_returned_and_the_conversation_goes_on_with_its_result(
    provider: str, client: FlaskClient, auth: dict[str, str]
) -> None:
    model = f"{provider}/{unique_model(provider)}"
    ask = [{"role": "user", "content": "Is item AB-1 in stock?"}]
    done = _run(client, auth, {"model": model, "messages": ask, "tools": TOOLS, "tool_choice": "auto"})
    result = done["result"]
    assert result["finish_reason"] == "tool_calls"
    assert result["text"] == ""
    [call] = result["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "check_stock"
    jsonschema.validate(json.loads(call["function"]["arguments"]), LOOKUP)

    follow_up = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"in_stock": 4}'},
    ]
    answer = _run(client, auth, {"model": model, "messages": follow_up, "tools": TOOLS})
    assert answer["result"]["finish_reason"] == "stop"
    assert answer["result"]["tool_calls"] is None
    assert answer["result"]["text"].startswith("Simulated answer")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_named_tool_choice_forces_that_tool(provider: str, client: FlaskClient, auth: dict[str, str]) -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "other", "parameters": {"type": "object", "properties": {}}},
        },
        *TOOLS,
    ]
    done = _run(
        client,
        auth,
        {
            "model": f"{provider}/{unique_model(provider)}",
            "prompt": "Check AB-1",
            "tools": tools,
            "tool_choice": {"type": "function", "function": {"name": "check_stock"}},
        },
    )
    assert [c["function"]["name"] for c in done["result"]["tool_calls"]] == ["check_stock"]


@pytest.mark.parametrize("provider", ["openai", "anthropic", "local"])
def test_json_schema_result_is_valid_against_the_schema(
    provider: str, client: FlaskClient, auth: dict[str, str], database: Database
) -> None:
    done = _run(
        client,
        auth,
        {
            "model": f"{provider}/{unique_model(provider)}",
            "prompt": "Extract the invoice",
            "response_format": JSON_SCHEMA,
        },
    )
    jsonschema.validate(json.loads(done["result"]["text"]), INVOICE)
    assert done["attempts"] == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_invalid_json_answer_is_retried_and_the_job_completes(
    provider: str, client: FlaskClient, auth: dict[str, str], sim: SimulatorControl, database: Database
) -> None:
    bare = unique_model(provider)
    sim.script(bare, [{"fault": "invalid_json"}])
    done = _run(
        client,
        auth,
        {"model": f"{provider}/{bare}", "prompt": "Extract the invoice", "response_format": JSON_SCHEMA},
    )
    assert done["attempts"] == 2
    jsonschema.validate(json.loads(done["result"]["text"]), INVOICE)
    first, second = _attempts(database, done["id"])
    assert first.error_type == "invalid_json_output" and first.outcome != "success"
    assert "not JSON" in (first.error_message or "")
    assert first.completion_tokens and first.completion_tokens > 0  # the broken answer was billed
    assert second.outcome == "success"
    assert sim.requests_for(bare) == 2


def test_json_object_on_openai_gives_a_json_object(client: FlaskClient, auth: dict[str, str]) -> None:
    done = _run(
        client,
        auth,
        {
            "model": f"openai/{unique_model()}",
            "prompt": "Reply in JSON",
            "response_format": {"type": "json_object"},
        },
    )
    assert isinstance(json.loads(done["result"]["text"]), dict)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_stop_sequence_cuts_the_result(provider: str, client: FlaskClient, auth: dict[str, str]) -> None:
    done = _run(
        client, auth, {"model": f"{provider}/{unique_model(provider)}", "prompt": "Hello", "stop": "to:"}
    )
    assert done["result"]["text"] == "Simulated answer "
    assert done["result"]["finish_reason"] == "stop"


def test_seed_makes_the_text_repeatable_and_n_gives_two_choices(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    model = f"openai/{unique_model()}"
    body = {"model": model, "prompt": "Write a slogan for a queue", "seed": 42, "n": 2}
    first = _run(client, auth, body)
    again = _run(client, auth, body)
    choices = first["result"]["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert choices[0]["text"] != choices[1]["text"]
    assert first["result"]["text"] == choices[0]["text"]
    assert again["result"]["choices"] == choices
    other = _run(client, auth, {**body, "seed": 43, "n": 1})
    assert other["result"]["choices"] is None and other["result"]["text"] != first["result"]["text"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("url", [PIXEL, "https://example.com/receipt.png"], ids=["base64", "url"])
def test_image_parts_reach_the_provider_and_count_as_prompt_tokens(
    provider: str, url: str, client: FlaskClient, auth: dict[str, str]
) -> None:
    model = f"{provider}/{unique_model(provider)}"
    text_only = _run(client, auth, {"model": model, "prompt": "What is on this receipt?"})
    parts = [
        {"type": "text", "text": "What is on this receipt?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    done = _run(client, auth, {"model": model, "messages": [{"role": "user", "content": parts}]})
    assert done["usage"]["prompt_tokens"] == text_only["usage"]["prompt_tokens"] + 85
    assert done["result"]["text"].startswith("Simulated answer to: What is on this receipt?")


def test_options_are_part_of_the_cache_key(
    client: FlaskClient, auth: dict[str, str], sim: SimulatorControl
) -> None:
    bare = unique_model()
    body = {"model": f"openai/{bare}", "prompt": "Cache me", "cache": True}
    plain = _run(client, auth, body)
    assert not plain["cached"]
    assert _run(client, auth, body)["cached"]
    with_tools = _run(client, auth, {**body, "tools": TOOLS, "tool_choice": "required"})
    assert not with_tools["cached"] and with_tools["result"]["tool_calls"]
    again = _run(client, auth, {**body, "tools": TOOLS, "tool_choice": "required"})
    assert again["cached"] and again["result"]["tool_calls"] == with_tools["result"]["tool_calls"]
    assert sim.requests_for(bare) == 2


def test_idempotency_key_tells_requests_apart_by_their_options(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    headers = {**auth, "Idempotency-Key": unique_model("key")}
    body = {"model": f"openai/{unique_model()}", "prompt": "Once", "seed": 1}
    assert client.post("/v1/jobs", json=body, headers=headers).status_code == 202
    assert client.post("/v1/jobs", json=body, headers=headers).status_code == 200
    conflict = client.post("/v1/jobs", json={**body, "seed": 2}, headers=headers)
    assert conflict.status_code == 409


@pytest.mark.parametrize(
    ("extra", "parameter"),
    [
        ({"seed": 3}, "'seed'"),
        ({"n": 2}, "'n'"),
        ({"response_format": {"type": "json_object"}}, "json_object"),
    ],
)
def test_what_anthropic_cannot_do_is_a_422_naming_parameter_and_provider(
    extra: dict[str, Any], parameter: str, client: FlaskClient, auth: dict[str, str]
) -> None:
    body = {"model": "anthropic/claude-3-5-haiku-latest", "prompt": "Hi", **extra}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["type"] == "unsupported_parameter"
    assert parameter in error["message"] and "'anthropic'" in error["message"]


def test_auto_routes_a_job_with_options_to_a_model_that_can_serve_them(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    done = _run(client, auth, {"model": "auto", "prompt": "Name a colour", "seed": 5, "n": 2})
    assert done["served_by"] == "openai/gpt-4o-mini"  # the default file's small model
    assert len(done["result"]["choices"]) == 2


def test_a_fallback_that_cannot_serve_the_request_is_refused_at_submit(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    body = {
        "model": "openai/gpt-4o-mini",
        "prompt": "Hi",
        "seed": 3,
        "fallbacks": ["anthropic/claude-3-5-haiku-latest"],
    }
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 422
    assert "claude-3-5-haiku-latest" in response.get_json()["error"]["message"]
    assert (
        client.post("/v1/jobs", json={**body, "fallbacks": ["openai/gpt-4o"]}, headers=auth).status_code
        == 202
    )


@pytest.mark.parametrize(
    "extra",
    [
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
            }
        },
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
        {"tool_choice": {"type": "function", "function": {"name": "missing"}}, "tools": TOOLS},
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}],
                }
            ]
        },
        {"messages": [{"role": "tool", "content": "no call id"}]},
        {"top_p": 1.5},
        {"n": 0},
    ],
)
def test_malformed_surface_is_a_422(extra: dict[str, Any], client: FlaskClient, auth: dict[str, str]) -> None:
    body = {"model": "openai/gpt-4o-mini", **({"prompt": "Hi"} if "messages" not in extra else {}), **extra}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["type"] == "validation_error"
