"""Model ids: ``"<provider>/<model>"``, written one way everywhere (the API's schema, the providers
file, the provider registry)."""

from __future__ import annotations

# What the API accepts on submit (a JSON-schema pattern): a lower-case provider name, a slash, and a
# model name without spaces. ``"auto"`` is accepted beside it where the router may choose.
MODEL_PATTERN = r"^[a-z0-9][a-z0-9_-]*/\S+$"


def split_model(model: str) -> tuple[str, str]:
    """``"openai/gpt-4o-mini"`` → ``("openai", "gpt-4o-mini")``.

    Only the first ``/`` separates: ``"local/meta/llama3"`` → ``("local", "meta/llama3")``.
    Raises ``ValueError`` when either part is missing or blank.
    """
    provider, sep, name = model.partition("/")
    if not sep or not provider.strip() or not name.strip():
        raise ValueError(f"model must look like 'provider/model', got {model!r}")
    return provider, name


def is_model_id(name: str) -> bool:
    """True for ``"<provider>/<model>"`` with both parts non-blank."""
    try:
        split_model(name)
    except ValueError:
        return False
    return True
