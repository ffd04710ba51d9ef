"""The check that an answer satisfies the job's ``response_format`` before the job is called
completed: ``json_object`` asks for a JSON object, ``json_schema`` for JSON valid against the
schema (``jsonschema``, Draft 2020-12). A miss raises :class:`InvalidJSONOutputError`, a
transient error (the next sample may well be valid), carrying what the call was billed.

Only jobs that asked for JSON come here; the validator of each schema is built once per process
(``_validator``), since a job's schema is read back from the database on every attempt.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator

from llmq.workers.providers.errors import InvalidJSONOutputError
from llmq.workers.providers.usage import ProviderUsage

if TYPE_CHECKING:
    from llmq.workers.providers.base import ProviderResponse

__all__ = ["check_json_output", "wants_json"]


def wants_json(options: dict[str, Any] | None) -> bool:
    if not options:
        return False
    kind = (options.get("response_format") or {}).get("type")
    return kind in ("json_object", "json_schema")


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_json))


def _problem(text: str, response_format: dict[str, Any]) -> str | None:
    """Why ``text`` does not satisfy ``response_format``; None when it does."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"the answer is not JSON ({exc.msg} at character {exc.pos})"
    if response_format["type"] == "json_object":
        return None if isinstance(value, dict) else "the answer is JSON but not an object"
    schema = response_format["json_schema"]["schema"]
    error = next(iter(_validator(json.dumps(schema, sort_keys=True)).iter_errors(value)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"the answer does not match the schema at {where}: {error.message}"[:400]


def check_json_output(options: dict[str, Any], response: ProviderResponse, provider: str) -> None:
    """Raise :class:`InvalidJSONOutputError` unless every choice's text satisfies the
    ``response_format`` of ``options`` (a choice that called tools has no text to check)."""
    response_format = options["response_format"]
    choices = response.choices or [{"index": 0, "text": response.text, "tool_calls": response.tool_calls}]
    for choice in choices:
        if choice.get("tool_calls"):
            continue
        problem = _problem(choice["text"], response_format)
        if problem is not None:
            error = InvalidJSONOutputError(f"{provider}: choice {choice['index']}: {problem}")
            error.billed = ProviderUsage(
                response.prompt_tokens,
                response.completion_tokens,
                response.cached_tokens,
                response.cache_write_tokens,
            )
            raise error
