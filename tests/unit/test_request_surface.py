"""The request surface as pure logic: the schema (what is stored with a job), the Anthropic
mapping, what each provider can do, the JSON output check and the simulator's schema sampler."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from llmq.api.errors import ApiError
from llmq.api.schemas import JobCreate
from llmq.api.surface_checks import check_providers_can_serve
from llmq.config.providers import ProviderSpec
from llmq.config.providers_file import ProvidersConfig, RoutingConfig
from llmq.simulator.surface import sample
from llmq.workers.capabilities import unsupported
from llmq.workers.providers.anthropic_surface import content_blocks, conversation, request_options
from llmq.workers.providers.base import ChatMessage, ProviderResponse
from llmq.workers.providers.errors import InvalidJSONOutputError
from llmq.workers.providers.json_output import check_json_output, wants_json

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
TOOL = {"type": "function", "function": {"name": "f", "description": "does f", "parameters": SCHEMA}}


def _response(text: str, **extra: Any) -> ProviderResponse:
    return ProviderResponse(
        text=text, finish_reason="stop", prompt_tokens=5, completion_tokens=3, model="m", **extra
    )


# --- the schema ----------------------------------------------------------------------------------


def test_a_plain_job_stores_no_options_and_its_messages_as_before() -> None:
    job = JobCreate.model_validate({"messages": [{"role": "user", "content": "hi"}], "n": 1})
    assert job.options_dict() is None
    assert job.message_dicts() == [{"role": "user", "content": "hi"}]


def test_options_are_stored_in_openai_spelling_with_stop_as_a_list() -> None:
    job = JobCreate.model_validate(
        {
            "prompt": "x",
            "tools": [TOOL],
            "tool_choice": "required",
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}},
            "stop": "END",
            "seed": 1,
            "top_p": 0.5,
            "n": 2,
        }
    )
    assert job.options_dict() == {
        "tools": [TOOL],
        "tool_choice": "required",
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}},
        "stop": ["END"],
        "seed": 1,
        "top_p": 0.5,
        "n": 2,
    }


def test_response_format_text_is_the_default_and_not_stored() -> None:
    assert (
        JobCreate.model_validate({"prompt": "x", "response_format": {"type": "text"}}).options_dict() is None
    )


@pytest.mark.parametrize(
    "body",
    [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": 3}}}},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"required": "a"}}}]},
        {"tools": [TOOL, TOOL]},
        {"tool_choice": {"type": "function", "function": {"name": "g"}}, "tools": [TOOL]},
        {"tool_choice": "required"},
        {"tool_choice": "none"},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"stop": ""},
        {"seed": 1.5},
        {"n": 9},
    ],
)
def test_bad_options_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        JobCreate.model_validate({"prompt": "x", **body})


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/svg;base64,AA=="}}],
        },
        {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        {"role": "assistant"},
        {"role": "tool", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]},
    ],
)
def test_bad_messages_are_refused(message: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        JobCreate.model_validate({"messages": [message]})


# --- what a provider can do ----------------------------------------------------------------------


def test_openai_can_do_everything_and_anthropic_names_what_it_cannot() -> None:
    options = {"seed": 1, "n": 2, "response_format": {"type": "json_object"}, "tools": [TOOL], "stop": ["x"]}
    assert unsupported("openai", options) == []
    problems = unsupported("anthropic", options)
    assert len(problems) == 3
    assert any("'seed'" in p for p in problems) and any("'n'" in p for p in problems)
    assert any("json_object" in p for p in problems)
    assert unsupported("anthropic", {"tools": [TOOL], "stop": ["x"], "top_p": 0.3, "n": 1}) == []
    assert unsupported("anthropic", None) == []


# --- the Anthropic mapping -----------------------------------------------------------------------


def test_options_map_to_anthropic_parameters() -> None:
    params, extra = request_options(
        {
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "stop": ["END", "STOP"],
            "top_p": 0.25,
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}},
        }
    )
    assert params == {
        "tools": [{"name": "f", "description": "does f", "input_schema": SCHEMA}],
        "tool_choice": {"type": "tool", "name": "f"},
        "stop_sequences": ["END", "STOP"],
        "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
    }
    assert extra == {"top_p": 0.25}


@pytest.mark.parametrize(("choice", "mapped"), [("auto", "auto"), ("none", "none"), ("required", "any")])
def test_tool_choice_words_map_to_anthropic(choice: str, mapped: str) -> None:
    params, _ = request_options({"tools": [TOOL], "tool_choice": choice})
    assert params["tool_choice"] == {"type": mapped}


def test_a_tool_without_parameters_gets_an_empty_object_schema() -> None:
    params, _ = request_options({"tools": [{"type": "function", "function": {"name": "now"}}]})
    assert params["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]


def test_images_become_base64_and_url_blocks() -> None:
    blocks = content_blocks(
        [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/AA=="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
        ]
    )
    assert blocks == [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/AA=="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
    ]


def test_tool_turns_become_tool_use_and_one_user_turn_of_tool_results() -> None:
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
        {"id": "c2", "type": "function", "function": {"name": "f", "arguments": '{"a": 2}'}},
    ]
    system, messages = conversation(
        (
            ChatMessage("system", "be brief"),
            ChatMessage("user", "go"),
            ChatMessage("assistant", "calling", tool_calls=calls),
            ChatMessage("tool", "one", tool_call_id="c1"),
            ChatMessage("tool", [{"type": "text", "text": "two"}], tool_call_id="c2"),
        )
    )
    assert system == "be brief"
    assert messages == [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}},
                {"type": "tool_use", "id": "c2", "name": "f", "input": {"a": 2}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "one"},
                {"type": "tool_result", "tool_use_id": "c2", "content": "two"},
            ],
        },
    ]


# --- the JSON output check -----------------------------------------------------------------------

JSON_SCHEMA_FORMAT = {
    "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}
}


def test_only_json_formats_are_checked() -> None:
    assert wants_json(JSON_SCHEMA_FORMAT) and wants_json({"response_format": {"type": "json_object"}})
    assert (
        not wants_json(None)
        and not wants_json({"seed": 1})
        and not wants_json({"response_format": {"type": "text"}})
    )


def test_valid_json_passes() -> None:
    check_json_output(JSON_SCHEMA_FORMAT, _response('{"a": 3}'), "p")
    check_json_output({"response_format": {"type": "json_object"}}, _response('{"b": null}'), "p")


@pytest.mark.parametrize(
    ("options", "text", "why"),
    [
        (JSON_SCHEMA_FORMAT, '{"a": ', "not JSON"),
        (JSON_SCHEMA_FORMAT, '{"a": "three"}', "at a"),
        (JSON_SCHEMA_FORMAT, "{}", "(root)"),
        ({"response_format": {"type": "json_object"}}, "[1, 2]", "not an object"),
    ],
)
def test_invalid_json_is_a_billed_retryable_failure(options: dict[str, Any], text: str, why: str) -> None:
    with pytest.raises(InvalidJSONOutputError) as failed:
        check_json_output(options, _response(text), "p")
    assert why in str(failed.value)
    assert failed.value.retryable and failed.value.error_type == "invalid_json_output"
    assert failed.value.billed is not None and failed.value.billed.prompt_tokens == 5


def test_every_choice_is_checked_but_not_one_that_called_tools() -> None:
    call = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    good = {"index": 0, "text": '{"a": 1}', "finish_reason": "stop", "tool_calls": None}
    tool = {"index": 1, "text": "", "finish_reason": "tool_calls", "tool_calls": call}
    check_json_output(JSON_SCHEMA_FORMAT, _response('{"a": 1}', choices=[good, tool]), "p")
    bad = {"index": 2, "text": "nope", "finish_reason": "stop", "tool_calls": None}
    with pytest.raises(InvalidJSONOutputError, match="choice 2"):
        check_json_output(JSON_SCHEMA_FORMAT, _response('{"a": 1}', choices=[good, bad]), "p")


# --- the simulator's sampler ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        SCHEMA,
        {"type": "array", "items": {"type": "number", "exclusiveMinimum": 2}, "minItems": 3},
        {"type": ["null", "string"], "minLength": 30, "maxLength": 40},
        {"anyOf": [{"type": "boolean"}, {"type": "string"}]},
        {
            "type": "object",
            "properties": {"when": {"type": "string", "format": "date-time"}, "k": {"const": 7}},
        },
        {"$defs": {"x": {"enum": ["a", "b"]}}, "type": "object", "properties": {"x": {"$ref": "#/$defs/x"}}},
        {"type": "integer", "minimum": 10, "maximum": 50},
    ],
)
def test_sampled_json_is_valid_against_its_schema(schema: dict[str, Any]) -> None:
    value = sample(schema, ["some", "words", "here", "and", "more"])
    jsonschema.validate(value, schema)
    assert json.loads(json.dumps(value)) == value
    assert sample(schema, ["some", "words", "here", "and", "more"]) == value  # deterministic


# --- the submit check ----------------------------------------------------------------------------


def _specs() -> dict[str, ProviderSpec]:
    return {
        "openai": ProviderSpec("openai", "openai", None, "k"),
        "anthropic": ProviderSpec("anthropic", "anthropic", None, "k"),
        "local": ProviderSpec("local", "openai", "http://vllm/v1", "k"),
    }


def test_submit_check_refuses_a_model_or_fallback_whose_provider_cannot() -> None:
    providers = ProvidersConfig()
    check_providers_can_serve(_specs(), providers, ["openai/a", "local/b"], {"seed": 1, "n": 3})
    check_providers_can_serve(_specs(), providers, ["anthropic/a"], None)
    with pytest.raises(ApiError) as refused:
        check_providers_can_serve(_specs(), providers, ["openai/a", "anthropic/b"], {"seed": 1})
    assert (
        refused.value.status == 422
        and "'anthropic/b'" in str(refused.value)
        and "'seed'" in str(refused.value)
    )


def test_submit_check_looks_at_both_models_auto_may_choose() -> None:
    routing = RoutingConfig(small_model="openai/small", large_model="anthropic/large")
    with pytest.raises(ApiError, match="'auto' may route to it"):
        check_providers_can_serve(_specs(), ProvidersConfig(routing=routing), ["auto"], {"n": 2})
    check_providers_can_serve(_specs(), ProvidersConfig(routing=routing), ["auto"], {"stop": ["x"]})


def test_the_job_page_shows_parts_and_tool_turns_as_text() -> None:
    from llmq.api.ui import _shown

    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]
    assert _shown({"role": "user", "content": parts}) == {"role": "user", "content": "look\n[image]"}
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    assert _shown({"role": "assistant", "tool_calls": [call]})["content"] == '[tool call f({"a":1})]'
    assert _shown({"role": "tool", "tool_call_id": "c1", "content": "ok"})["content"] == "[result of c1]\nok"
