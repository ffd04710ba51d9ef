"""The providers file (``LLMQ_PROVIDERS_FILE``, default ``llmq/providers.default.toml``): prices,
rate limits, circuit breakers, fallbacks, the response cache and ``model: "auto"`` routing, and
checked at start with the line of every mistake.

The file is TOML, one table per model (``[models."openai/gpt-4o-mini"]``) plus a few top-level
tables. It is parsed with ``tomllib`` (floats as ``Decimal``, so ``0.15`` stays exactly ``0.15``)
and validated by pydantic models that forbid unknown keys: a typo is an error at start-up, not a
silently ignored setting. Any problem is a :class:`ProvidersFileError` that names the file, the
line and the key.

Adding a setting later is adding a field to one of the models below; the loader and its error
reporting need no change (a new table also gets a line in ``_TABLES``, for the "known keys" hint).

Shape::

    ProvidersConfig
    ├── models: {"<provider>/<model>": ModelConfig}
    │                                  ├── input_usd_per_mtok   ┐ both or neither
    │                                  ├── output_usd_per_mtok  ┘ → .price: ModelPrice | None
    │                                  ├── cached_input_usd_per_mtok, cache_write_usd_per_mtok,
    │                                  │   prices_taken_on           (``config/prices.py``)
    │                                  ├── rpm, tpm, concurrency        (None: no limit)
    │                                  ├── context_window               (None: unknown)
    │                                  ├── fallbacks: ["<provider>/<model>", …]
    │                                  ├── fallback_on_content_policy
    │                                  └── breaker: BreakerOverrides    (any BreakerConfig key)
    ├── breaker: BreakerConfig   failures, failure_ratio, window_s, min_calls, cooldown_s,
    │                            probe_timeout_s           → .breaker_for(model)
    ├── limits: LimitsConfig     window_s, lease_s
    ├── cache: CacheConfig       ttl_s, temperature_zero, shared_across_tenants, lru_size
    ├── routing: RoutingConfig   small_model, large_model, long_prompt_chars, complex_words,
    │                            complex_min_words, multi_step_cues, numbered_steps
    ├── tiers: {"<name>": TierConfig}   rpm, tpm, concurrency, weight   (``config/tiers.py``)
    ├── tenants: TenantsConfig   default_tier
    ├── budgets: BudgetsConfig   thresholds
    ├── usage: UsageConfig       metadata_keys
    ├── prices: PricesConfig     taken_on
    └── provider_batches: ProviderBatchesConfig   enabled, providers, min_jobs, max_wait_s,
                                 max_jobs, poll_interval_s, fallback_after_s, lease_s,
                                 step_timeout_s      (``config/provider_batches.py``)

Checks that span tables (a model listed as its own fallback, a fallback listed twice) run after
the per-key validation, and name the line of the offending key too.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from llmq.config.model_ids import is_model_id
from llmq.config.prices import ModelPrice, PricesConfig, UsdPerMtok
from llmq.config.provider_batches import ProviderBatchesConfig
from llmq.config.tiers import (
    BUILTIN_TIERS,
    BudgetsConfig,
    TenantsConfig,
    TierConfig,
    TierName,
    UsageConfig,
)
from llmq.config.toml_lines import KEY_LINE as _KEY_LINE
from llmq.config.toml_lines import dotted as _dotted
from llmq.config.toml_lines import is_index as _is_index
from llmq.config.toml_lines import locate as _locate

__all__ = [
    "BreakerConfig",
    "BreakerOverrides",
    "CacheConfig",
    "LimitsConfig",
    "ModelConfig",
    "ModelPrice",
    "ProvidersConfig",
    "ProvidersFileError",
    "RoutingConfig",
    "load_providers_file",
]


def _number(value: object) -> object:
    # tomllib gives ints, Decimals (floats) and strings; only the first two are numbers here.
    if isinstance(value, bool | str):
        raise ValueError("must be a number, not " + ("a boolean" if isinstance(value, bool) else "a string"))
    return value


Count = Annotated[int, Field(strict=True, ge=1)]
Seconds = Annotated[float, BeforeValidator(_number), Field(gt=0, allow_inf_nan=False)]
Ratio = Annotated[float, BeforeValidator(_number), Field(gt=0, le=1, allow_inf_nan=False)]


def _check_model_name(name: str) -> str:
    if not is_model_id(name):
        raise ValueError("a model table must be named '<provider>/<model>', e.g. 'openai/gpt-4o'")
    return name


def _check_model_ref(name: str) -> str:
    if not is_model_id(name):
        raise ValueError(f"{name!r} is not a model id: write '<provider>/<model>', e.g. 'openai/gpt-4o'")
    return name


ModelName = Annotated[str, AfterValidator(_check_model_name)]
ModelRef = Annotated[str, Field(strict=True), AfterValidator(_check_model_ref)]


# --- circuit breakers, limits, cache, routing ---------------------------------------------------


class BreakerConfig(BaseModel, extra="forbid", frozen=True):
    """``[breaker]``: when a model's circuit breaker opens, and for how long (see
    :mod:`llmq.workers.breaker`)."""

    failures: Count = 5  # consecutive transient failures that open it
    failure_ratio: Ratio = 0.5  # ... or this share of failed calls over window_s,
    window_s: Seconds = 60.0  # ... counted over this rolling window,
    min_calls: Count = 20  # ... once the window holds at least this many calls
    cooldown_s: Seconds = 30.0  # open this long, then one probe call goes through
    probe_timeout_s: Seconds = 120.0  # a probe not reported by then frees the way for another


class BreakerOverrides(BaseModel, extra="forbid", frozen=True):
    """``[models."<id>".breaker]``: any key of ``[breaker]``, for one model."""

    failures: Count | None = None
    failure_ratio: Ratio | None = None
    window_s: Seconds | None = None
    min_calls: Count | None = None
    cooldown_s: Seconds | None = None
    probe_timeout_s: Seconds | None = None


class LimitsConfig(BaseModel, extra="forbid", frozen=True):
    """``[limits]``: the window of ``rpm``/``tpm`` and the lease of a concurrency slot (see
    :mod:`llmq.workers.ratelimit`)."""

    window_s: Seconds = 60.0
    lease_s: Seconds = 60.0
    # Requests reach the provider a little after their admission (commit, thread hand-off, the
    # network). Counting admissions over window_s + margin_s keeps the provider's own window
    # within the limit as long as that delay stays under margin_s.
    margin_s: float = Field(default=1.0, ge=0)


class CacheConfig(BaseModel, extra="forbid", frozen=True):
    """``[cache]``: the exact-match response cache (see :mod:`llmq.workers.cache`)."""

    ttl_s: Count = 3600
    temperature_zero: StrictBool = False
    shared_across_tenants: StrictBool = False
    lru_size: Annotated[int, Field(strict=True, ge=0)] = 1000


_DEFAULT_COMPLEX_WORDS = (
    "analyze", "analyse", "analysis", "compare", "comparison", "contrast", "evaluate", "assess",
    "critique", "justify", "prove", "derive", "plan", "design", "architect", "optimize",
    "debug", "refactor", "synthesize", "tradeoff", "tradeoffs", "trade-off", "trade-offs",
)  # fmt: skip
_DEFAULT_MULTI_STEP_CUES = (
    "step by step", "step-by-step", "walk me through", "walk through", "show your work",
    "explain your reasoning", "break it down", "break down", "think through",
)  # fmt: skip


def _non_blank_words(words: list[str]) -> list[str]:
    cleaned = [w.strip().lower() for w in words]
    if any(not w for w in cleaned):
        raise ValueError("entries must not be blank")
    return cleaned


WordList = Annotated[list[Annotated[str, Field(strict=True)]], AfterValidator(_non_blank_words)]


class RoutingConfig(BaseModel, extra="forbid", frozen=True):
    """``[routing]``: how ``model: "auto"`` picks a model (see :mod:`llmq.workers.routing`)."""

    small_model: ModelRef = "openai/gpt-4o-mini"
    large_model: ModelRef = "openai/gpt-4o"
    long_prompt_chars: Count = 8000
    complex_words: WordList = Field(default_factory=lambda: list(_DEFAULT_COMPLEX_WORDS))
    complex_min_words: Count = 1
    multi_step_cues: WordList = Field(default_factory=lambda: list(_DEFAULT_MULTI_STEP_CUES))
    numbered_steps: Count = 3


# --- models ---------------------------------------------------------------------------------------


class ModelConfig(BaseModel, extra="forbid"):
    """One ``[models."<provider>/<model>"]`` table."""

    input_usd_per_mtok: UsdPerMtok | None = None
    output_usd_per_mtok: UsdPerMtok | None = None
    cached_input_usd_per_mtok: UsdPerMtok | None = None  # None: the input price
    cache_write_usd_per_mtok: UsdPerMtok | None = None  # None: the input price
    # The provider's batch API price (None: half the standard price, as both providers bill).
    batch_input_usd_per_mtok: UsdPerMtok | None = None
    batch_output_usd_per_mtok: UsdPerMtok | None = None
    prices_taken_on: dt.date | None = None  # None: [prices] taken_on
    rpm: Count | None = None
    tpm: Count | None = None
    concurrency: Count | None = None
    context_window: Count | None = None
    fallbacks: list[ModelRef] = Field(default_factory=list)
    fallback_on_content_policy: StrictBool = False
    breaker: BreakerOverrides | None = None

    @model_validator(mode="after")
    def _both_prices_or_neither(self) -> ModelConfig:
        if (self.input_usd_per_mtok is None) != (self.output_usd_per_mtok is None):
            raise ValueError("give both input_usd_per_mtok and output_usd_per_mtok, or neither")
        return self

    @field_validator("fallbacks")
    @classmethod
    def _no_repeats(cls, fallbacks: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in fallbacks:
            if name in seen:
                raise ValueError(f"{name!r} is listed twice")
            seen.add(name)
        return fallbacks

    @property
    def price(self) -> ModelPrice | None:
        if self.input_usd_per_mtok is None or self.output_usd_per_mtok is None:
            return None
        return ModelPrice(
            input_usd_per_mtok=self.input_usd_per_mtok,
            output_usd_per_mtok=self.output_usd_per_mtok,
            cached_input_usd_per_mtok=self.cached_input_usd_per_mtok,
            cache_write_usd_per_mtok=self.cache_write_usd_per_mtok,
            batch_input_usd_per_mtok=self.batch_input_usd_per_mtok,
            batch_output_usd_per_mtok=self.batch_output_usd_per_mtok,
            taken_on=self.prices_taken_on,
        )


_DEFER_CROSS_CHECKS = "defer_cross_checks"


class ProvidersConfig(BaseModel, extra="forbid"):
    """The whole providers file."""

    models: dict[ModelName, ModelConfig] = Field(default_factory=dict)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    tiers: dict[TierName, TierConfig] = Field(default_factory=dict)
    tenants: TenantsConfig = Field(default_factory=TenantsConfig)
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig)
    usage: UsageConfig = Field(default_factory=UsageConfig)
    prices: PricesConfig = Field(default_factory=PricesConfig)
    provider_batches: ProviderBatchesConfig = Field(default_factory=ProviderBatchesConfig)

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> ProvidersConfig:
        # The loader runs these itself, to name the line; built in code, they run here.
        if not (info.context or {}).get(_DEFER_CROSS_CHECKS):
            problems = _cross_problems(self)
            if problems:
                raise ValueError("; ".join(f"{_dotted(loc)}: {reason}" for loc, reason in problems))
        return self

    def all_tiers(self) -> dict[str, TierConfig]:
        """The built-in tiers, with the file's own tiers added or put in their place."""
        return {**BUILTIN_TIERS, **self.tiers}

    def tier(self, name: str) -> TierConfig | None:
        return self.tiers.get(name) or BUILTIN_TIERS.get(name)

    def model_prices(self) -> dict[str, ModelPrice]:
        """Model → price, a model's ``prices_taken_on`` defaulting to ``[prices] taken_on``."""
        prices: dict[str, ModelPrice] = {}
        for name, cfg in self.models.items():
            price = cfg.price
            if price is not None:
                if price.taken_on is None and self.prices.taken_on is not None:
                    price = price.model_copy(update={"taken_on": self.prices.taken_on})
                prices[name] = price
        return prices

    def model(self, name: str) -> ModelConfig | None:
        """The table of ``name``, or None for a model the file does not list."""
        return self.models.get(name)

    def breaker_for(self, name: str) -> BreakerConfig:
        """``[breaker]`` with the model's own ``breaker`` overrides applied."""
        cfg = self.models.get(name)
        if cfg is None or cfg.breaker is None:
            return self.breaker
        return self.breaker.model_copy(update=cfg.breaker.model_dump(exclude_none=True))


def _cross_problems(config: ProvidersConfig) -> list[tuple[list[str], str]]:
    problems: list[tuple[list[str], str]] = []
    for name, cfg in config.models.items():
        if name in cfg.fallbacks:
            index = cfg.fallbacks.index(name)
            problems.append((["models", name, "fallbacks", str(index)], "a model cannot be its own fallback"))
    if config.tier(config.tenants.default_tier) is None:
        problems.append((["tenants", "default_tier"], f"no tier {config.tenants.default_tier!r}"))
    return problems


# --- loading -------------------------------------------------------------------------------------


class ProvidersFileError(Exception):
    """The providers file cannot be used. The message names the file, the line (when known) and
    the offending key, and is meant to be shown as is: no traceback needed."""

    def __init__(
        self,
        path: str | Path,
        reason: str,
        *,
        line: int | None = None,
        key: str | None = None,
        also: Sequence[str] = (),
    ) -> None:
        self.path = str(path)
        self.reason = reason
        self.line = line
        self.key = key
        self.also = list(also)  # the other problems found, each "line N: key K: reason"
        where = self.path if line is None else f"{self.path}, line {line}"
        what = f"key {key}: " if key else ""
        more = f" (also: {'; '.join(self.also)})" if self.also else ""
        super().__init__(f"providers file {where}: {what}{reason}{more}")


def load_providers_file(path: str | Path) -> ProvidersConfig:
    """Read and validate a providers file; any problem raises :class:`ProvidersFileError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvidersFileError(path, f"cannot be read ({exc.__class__.__name__}: {exc})") from None
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise _decode_error(path, text, exc) from None
    try:
        config = ProvidersConfig.model_validate(data, context={_DEFER_CROSS_CHECKS: True})
    except ValidationError as exc:
        raise _validation_error(path, text, exc) from None
    problems = _cross_problems(config)
    if problems:
        located = [
            (_locate(text, loc, _index_value(config, loc)), _key_of(loc), reason) for loc, reason in problems
        ]
        raise _report(path, located)
    return config


def _key_of(loc: list[str]) -> str:
    """The dotted key a problem is reported under: an array's key, not its element's index."""
    return _dotted(loc[:-1] if _is_index(loc) else loc)


def _index_value(config: ProvidersConfig, loc: list[str]) -> str | None:
    if len(loc) == 4 and loc[0] == "models" and loc[2] == "fallbacks":
        return config.models[loc[1]].fallbacks[int(loc[3])]
    return None


def _decode_error(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> ProvidersFileError:
    message = str(exc)
    match = re.search(r"\(at line (\d+), column \d+\)", message)
    reason = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", message)
    reason = f"invalid TOML: {reason}"
    if match is None:
        return ProvidersFileError(path, reason)
    line = int(match.group(1))
    lines = text.splitlines()
    key = None
    if 0 < line <= len(lines):
        source = lines[line - 1].strip()
        key_match = _KEY_LINE.match(source)
        if source.startswith("["):
            key = source
        elif key_match:
            key = key_match.group(1).strip()
    return ProvidersFileError(path, reason, line=line, key=key)


def _validation_error(path: Path, text: str, exc: ValidationError) -> ProvidersFileError:
    problems: list[tuple[int | None, str, str]] = []
    for error in exc.errors(include_url=False):
        loc = _clean_loc(error["loc"])
        if error["type"] == "extra_forbidden":
            reason = "unknown key" + _allowed_keys(loc[:-1])
        else:
            reason = error["msg"].removeprefix("Value error, ")
        element = error.get("input") if _is_index(loc) else None
        line = _locate(text, loc, element if isinstance(element, str) else None)
        problems.append((line, _key_of(loc), reason))
    return _report(path, problems)


def _report(path: Path, problems: list[tuple[int | None, str, str]]) -> ProvidersFileError:
    # Report in file order: the first problem a reader meets is the one named first.
    problems.sort(key=lambda p: (p[0] is None, p[0] or 0))
    line, key, reason = problems[0]
    others = [f"line {ln}: key {k}: {r}" if ln is not None else f"key {k}: {r}" for ln, k, r in problems[1:6]]
    if len(problems) > 6:
        others.append(f"and {len(problems) - 6} more")
    return ProvidersFileError(path, reason, line=line, key=key, also=others)


def _clean_loc(loc: Sequence[int | str]) -> list[str]:
    # A dict key's own validation error ends in "[key]"; the key is the part before it.
    return [str(part) for part in loc if part != "[key]"]


# Tables whose keys are listed when an unknown key is found in them ("*" stands for a model id).
_TABLES: dict[tuple[str, ...], type[BaseModel]] = {
    (): ProvidersConfig,
    ("models", "*"): ModelConfig,
    ("models", "*", "breaker"): BreakerOverrides,
    ("breaker",): BreakerConfig,
    ("limits",): LimitsConfig,
    ("cache",): CacheConfig,
    ("routing",): RoutingConfig,
    ("tiers", "*"): TierConfig,
    ("tenants",): TenantsConfig,
    ("budgets",): BudgetsConfig,
    ("usage",): UsageConfig,
    ("prices",): PricesConfig,
    ("provider_batches",): ProviderBatchesConfig,
}


def _allowed_keys(parent: list[str]) -> str:
    shape = tuple(
        "*" if i == 1 and parent[0] in ("models", "tiers") else part for i, part in enumerate(parent)
    )
    model = _TABLES.get(shape)
    if model is None:
        return ""
    return " (known keys: " + ", ".join(model.model_fields) + ")"
