"""Which jobs the provider-batch stage parks for the gatherer: bulk jobs on their own model of a
covered provider, whatever their request surface or budget, never batched before — and the lines
of /v1/batches unless the config keeps them on the normal path."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from llmq.config.provider_batches import ProviderBatchesConfig
from llmq.config.providers_file import ProvidersConfig
from llmq.models.base import utcnow
from llmq.models.records import ClaimedJob
from llmq.tasks.gate.provider_batch import ProviderBatchStage
from llmq.tasks.gate.stages import Park, Ticket
from tests.unit.gate_runtime import gate_claim

MODEL = "openai/gpt-4o-mini"


def _rt(**config: Any) -> Any:
    providers = ProvidersConfig(provider_batches=ProviderBatchesConfig(enabled=True, **config))
    return SimpleNamespace(
        providers=providers,
        registry=SimpleNamespace(batch_api=lambda provider: object()),
        policies=SimpleNamespace(get=lambda tenant_id, key_id, session=None: None),
    )


def _claim(**values: Any) -> ClaimedJob:
    defaults = {"priority": "bulk", "created_at": utcnow() - timedelta(seconds=1)}
    return gate_claim("job_1", MODEL, **{**defaults, **values})


def _parks(rt: Any, claim: ClaimedJob) -> bool:
    ticket = Ticket(claim, chain=[claim.model])
    return isinstance(ProviderBatchStage().admit(rt, ticket), Park)


def test_a_plain_bulk_job_waits_for_a_provider_batch() -> None:
    assert _parks(_rt(), _claim())


def test_interactive_work_and_jobs_batched_before_keep_the_normal_path() -> None:
    rt = _rt()
    assert not _parks(rt, _claim(priority="interactive"))
    assert not _parks(rt, _claim(provider_batch_id="pb_1"))  # never in a second batch


def test_bulk_jobs_with_tools_json_output_or_images_wait_for_a_batch_too() -> None:
    rt = _rt()
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert _parks(rt, _claim(request_options={"tools": tools, "tool_choice": "required"}))
    assert _parks(rt, _claim(request_options={"response_format": {"type": "json_object"}, "seed": 1}))
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    assert _parks(rt, _claim(messages=[{"role": "user", "content": [image]}]))


def test_batch_lines_go_by_provider_batch_unless_the_config_says_no() -> None:
    line = _claim(batch_id="batch_1")
    assert _parks(_rt(), line)
    assert not _parks(_rt(batch_lines=False), line)
    assert _parks(_rt(batch_lines=False), _claim())  # other bulk jobs still do
