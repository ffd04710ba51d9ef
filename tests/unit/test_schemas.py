"""Validation of every field of ``POST /v1/jobs``, good and bad values."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from llmq.api.schemas import JobCreate, JobListQuery


def _ok(**fields: Any) -> JobCreate:
    return JobCreate.model_validate({"prompt": "hi", **fields})


def _bad(body: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        JobCreate.model_validate(body)
    return [".".join(str(p) for p in e["loc"]) for e in info.value.errors()]


def test_prompt_becomes_one_user_message() -> None:
    assert _ok().message_dicts() == [{"role": "user", "content": "hi"}]


def test_messages_keep_their_roles_in_order() -> None:
    spec = JobCreate.model_validate(
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"},
            ]
        }
    )
    assert [m["role"] for m in spec.message_dicts()] == ["system", "user", "assistant"]


@pytest.mark.parametrize(
    "body",
    [{}, {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}],
    ids=["neither", "both"],
)
def test_exactly_one_of_prompt_or_messages(body: dict[str, Any]) -> None:
    assert _bad(body) == [""]  # the body as a whole, not one field


@pytest.mark.parametrize("prompt", ["x", "x" * 100_000])
def test_prompt_length_bounds_accepted(prompt: str) -> None:
    assert _ok(prompt=prompt).prompt == prompt


@pytest.mark.parametrize("prompt", ["", "x" * 100_001, 5, None, ["a"]])
def test_prompt_bad_values(prompt: Any) -> None:
    # a null prompt is no prompt: the body then has neither prompt nor messages
    assert _bad({"prompt": prompt}) == (["prompt"] if prompt is not None else [""])


@pytest.mark.parametrize(
    "messages",
    [
        [],
        "hi",
        [{"role": "tool", "content": "x"}],
        [{"role": "user"}],
        [{"role": "user", "content": ""}],
        [{"role": "user", "content": "x", "colour": "n"}],
        [{"role": "user", "content": 3}],
    ],
)
def test_messages_bad_values(messages: Any) -> None:
    locations = _bad({"messages": messages})
    assert locations and all(loc.startswith("messages") for loc in locations), locations


@pytest.mark.parametrize(
    "model", ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-latest", "local/meta/llama3:8b"]
)
def test_model_good(model: str) -> None:
    assert _ok(model=model).model == model


@pytest.mark.parametrize("model", ["gpt-4o-mini", "/gpt", "openai/", "OpenAI/gpt", "openai/has space", 7])
def test_model_bad(model: Any) -> None:
    assert "model" in _bad({"prompt": "a", "model": model})


@pytest.mark.parametrize("value", [1, 1024, 32_768])
def test_max_tokens_good(value: int) -> None:
    assert _ok(max_tokens=value).max_tokens == value


@pytest.mark.parametrize("value", [0, -1, 32_769, "5", 1.5, True])
def test_max_tokens_bad(value: Any) -> None:
    assert "max_tokens" in _bad({"prompt": "a", "max_tokens": value})


@pytest.mark.parametrize("value", [0, 0.7, 1, 2])
def test_temperature_good(value: float) -> None:
    assert _ok(temperature=value).temperature == value


@pytest.mark.parametrize("value", [-0.01, 2.01, "1", None])
def test_temperature_bad(value: Any) -> None:
    if value is None:
        assert _ok(temperature=None).temperature is None
        return
    assert "temperature" in _bad({"prompt": "a", "temperature": value})


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/hook", "https://example.com/a?b=c"])
def test_webhook_url_good(url: str) -> None:
    assert str(_ok(webhook_url=url).webhook_url).startswith(url.split("?")[0][:10])


@pytest.mark.parametrize("url", ["ftp://x/y", "example.com/hook", "", "https://" + "a" * 2050 + ".com"])
def test_webhook_url_bad(url: str) -> None:
    assert any(loc.startswith("webhook_url") for loc in _bad({"prompt": "a", "webhook_url": url}))


def test_metadata_good() -> None:
    assert _ok(metadata={"a": "b", "order": "1"}).metadata == {"a": "b", "order": "1"}


@pytest.mark.parametrize(
    "metadata",
    [
        {"a": 1},
        {"a": None},
        ["a"],
        {"": "x"},
        {"k" * 65: "v"},
        {"k": "v" * 513},
        {f"k{i}": "v" for i in range(17)},
    ],
)
def test_metadata_bad(metadata: Any) -> None:
    locations = _bad({"prompt": "a", "metadata": metadata})
    assert locations and all(loc.startswith("metadata") for loc in locations), locations


@pytest.mark.parametrize("user", ["u", "user_1.a-b", "x" * 128])
def test_user_good(user: str) -> None:
    assert _ok(user=user).user == user


@pytest.mark.parametrize("user", ["", "has space", "é", "x" * 129, "a/b", 5])
def test_user_bad(user: Any) -> None:
    assert "user" in _bad({"prompt": "a", "user": user})


def test_unknown_fields_are_rejected() -> None:
    assert "max_token" in _bad({"prompt": "a", "max_token": 5})


@pytest.mark.parametrize("value", [0, -1, 86_401, "10"])
def test_timeout_bad(value: Any) -> None:
    assert "timeout_s" in _bad({"prompt": "a", "timeout_s": value})


def test_list_query_bounds() -> None:
    assert JobListQuery.model_validate({}).limit == 20
    assert JobListQuery.model_validate({"limit": "100", "status": "failed"}).limit == 100
    for bad in ({"limit": "0"}, {"limit": "101"}, {"status": "done"}, {"other": "x"}):
        with pytest.raises(ValidationError):
            JobListQuery.model_validate(bad)
