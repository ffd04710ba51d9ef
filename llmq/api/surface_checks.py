"""The submit-time check that every model a job may run on can do what the job asks (tools,
response_format, seed, n, ...): a 422 naming the parameter and the provider, never a job that
fails later at the provider. Shared by ``POST /v1/jobs`` and ``POST /v1/chat/completions``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from llmq.api.errors import ApiError
from llmq.config.model_ids import split_model
from llmq.config.providers import ProviderSpec
from llmq.config.providers_file import ProvidersConfig
from llmq.workers.capabilities import unsupported
from llmq.workers.routing import AUTO_MODEL

__all__ = ["check_providers_can_serve"]


def check_providers_can_serve(
    specs: Mapping[str, ProviderSpec],
    providers: ProvidersConfig,
    models: Iterable[str],
    options: Mapping[str, Any] | None,
) -> None:
    """Raise a 422 unless the provider of each of ``models`` (the job's model and the fallbacks
    it named; ``auto`` stands for both models the router may choose) can serve ``options``."""
    if not options:
        return
    for model in models:
        candidates = (
            [providers.routing.small_model, providers.routing.large_model] if model == AUTO_MODEL else [model]
        )
        for candidate in candidates:
            name, _ = split_model(candidate)
            spec = specs.get(name)
            if spec is None:
                continue  # an unknown provider is refused by the caller's own check
            problems = unsupported(spec.kind, options)
            if problems:
                via = f" (model {model!r} may route to it)" if model == AUTO_MODEL else ""
                raise ApiError(
                    422,
                    f"model {candidate!r}{via}: provider {name!r} cannot serve this request: "
                    + "; ".join(problems),
                    type="unsupported_parameter",
                )
