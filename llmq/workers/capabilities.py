"""What each kind of provider can be asked: the options of a job (``request_options``) and its
messages that a provider's API has no faithful mapping for.

The API refuses such a job at submit with a 422 naming the parameter and the provider, for the
model the job names and for every fallback it names itself (``auto`` is checked on both models
the router can choose). A fallback the *providers file* adds is not the client's choice: the
worker skips those that cannot serve the job (``tasks/gate/route.py``) rather than fail it.

==================  ===============================  ==========================================
option              OpenAI (and compatible servers)   Anthropic Messages
==================  ===============================  ==========================================
tools, tool_choice  as given                          tools (input_schema), auto/none/any/tool
response_format     as given                          json_schema → output_config.format;
                                                      json_object → refused (no free-form JSON)
stop                as given                          stop_sequences
seed                as given                          refused (no seed)
top_p               as given                          top_p
n > 1               as given                          refused (one answer per call)
images              as given                          image blocks (base64 or url source)
==================  ===============================  ==========================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["unsupported"]


def unsupported(kind: str, options: Mapping[str, Any] | None) -> list[str]:
    """Why a provider of ``kind`` ("openai" or "anthropic") cannot serve a job with these
    ``options``: one sentence per parameter, empty when it can."""
    if not options or kind != "anthropic":
        return []
    problems = []
    if options.get("seed") is not None:
        problems.append("'seed' is not supported by the Anthropic Messages API")
    if (options.get("n") or 1) > 1:
        problems.append("'n' > 1 is not supported by the Anthropic Messages API (one answer per call)")
    response_format = options.get("response_format") or {}
    if response_format.get("type") == "json_object":
        problems.append(
            "response_format 'json_object' has no Anthropic equivalent; "
            "give response_format 'json_schema' with a schema instead"
        )
    return problems
