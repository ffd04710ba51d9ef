"""The gate as ordered stages, on the bundled Redis: what a stage took is given back when a later
stage refuses the model, and a call that never reached the provider costs no request."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from llmq.config.providers_file import ModelConfig, ProvidersConfig
from llmq.config.settings import Settings
from llmq.models.records import ClaimedJob
from llmq.tasks import gate as gate_module
from llmq.tasks.gate import CallEnd, Go, Park, after_call, gate
from llmq.tasks.gate.stages import Refusal, Ticket
from llmq.workers.tokens import estimate_input_tokens
from tests.unit.gate_runtime import gate_claim, gate_runtime

MODEL = "sim/gated"


def _runtime(client: redis.Redis, **model: Any) -> Any:
    return gate_runtime(client, ProvidersConfig(models={MODEL: ModelConfig(**model)}))


def _claim(job_id: str) -> ClaimedJob:
    return gate_claim(job_id, MODEL)


def test_a_call_that_never_reached_the_provider_gives_its_request_back(rdb: redis.Redis) -> None:
    rt = _runtime(rdb, rpm=1, concurrency=1)
    first = gate(rt, _claim("job_a"))
    assert isinstance(first, Go) and first.reservation is not None and first.slot_holder is not None
    after_call(rt, first, CallEnd(sent=False, transient_failure=False, total_tokens=None))
    assert rt.limiter.usage(MODEL)["in_flight"] == 0
    again = gate(rt, _claim("job_b"))
    assert isinstance(again, Go), "the one request a minute was not spent"
    after_call(rt, again, CallEnd(sent=True, transient_failure=False, total_tokens=12))
    assert isinstance(gate(rt, _claim("job_c")), Park), "a call that was sent keeps its request"


class _Refuses:
    """A model stage after the limits that refuses every model (a spent budget, say)."""

    def admit(self, rt: Any, ticket: Ticket, model: str) -> Refusal | None:
        return Refusal(5.0, "budget", try_next_model=False)

    def undo(self, rt: Any, ticket: Ticket, model: str) -> None:
        pass

    def release(self, rt: Any, go: Go, end: CallEnd) -> None:
        pass


def test_a_later_stage_that_refuses_the_model_gets_the_earlier_stages_undone(
    rdb: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = _runtime(rdb, rpm=1, concurrency=1)
    monkeypatch.setattr(gate_module, "MODEL_STAGES", (*gate_module.MODEL_STAGES, _Refuses()))
    refused = gate(rt, _claim("job_a"))
    assert refused == Park(delay_s=5.0, reason="budget")
    usage = rt.limiter.usage(MODEL)
    assert usage["in_flight"] == 0, "the slot was given back"
    monkeypatch.undo()
    assert isinstance(gate(rt, _claim("job_b")), Go), "and the request too"


def test_a_job_without_max_tokens_is_cached_and_counted_at_the_default(rdb: redis.Redis) -> None:
    """It is sent the default, so it shares its cache key with a job that asked for the default,
    and its TPM reservation counts the default as its output."""
    rt = _runtime(rdb, tpm=100_000)
    rt.settings = Settings(default_max_tokens=300)
    without, explicit = _claim("job_a"), _claim("job_b")
    without = ClaimedJob(**{**without.__dict__, "max_tokens": None, "use_cache": True})
    explicit = ClaimedJob(**{**explicit.__dict__, "max_tokens": 300, "use_cache": True})
    go_without, go_explicit = gate(rt, without), gate(rt, explicit)
    assert isinstance(go_without, Go) and isinstance(go_explicit, Go)
    assert go_without.cache_key == go_explicit.cache_key
    assert rt.limiter.usage(MODEL)["tpm_used"] == 2 * (estimate_input_tokens(without.messages) + 300)
