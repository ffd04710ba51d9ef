"""The providers file (``LLMQ_PROVIDERS_FILE``, default ``llmq/providers.default.toml``) and the
price table built from it.

The file is TOML, one table per model (``[models."openai/gpt-4o-mini"]``). It is parsed with
``tomllib`` (floats as ``Decimal``, so ``0.15`` stays exactly ``0.15``) and validated by pydantic
models that forbid unknown keys: a typo is an error at start-up, not a silently ignored setting.
Any problem is a :class:`ProvidersFileError` that names the file, the line and the key.

Adding a setting later (``rpm``, ``tpm``, ``concurrency``, ``fallbacks``, ``context_window`` on a
model; a ``[breaker]`` table) is adding a field to :class:`ModelConfig` or to
:class:`ProvidersConfig`; the loader and its error reporting need no change.

Shape::

    ProvidersConfig
    └── models: {"<provider>/<model>": ModelConfig}
                                       ├── input_usd_per_mtok   ┐ both or neither
                                       └── output_usd_per_mtok  ┘ → .price: ModelPrice | None
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, ValidationError, model_validator

__all__ = [
    "ModelConfig",
    "ModelPrice",
    "PriceTable",
    "ProvidersConfig",
    "ProvidersFileError",
    "load_providers_file",
]

_PER_TOKENS = Decimal(1_000_000)
_COST_QUANTUM = Decimal("0.00000001")  # 8 decimals

UsdPerMtok = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


def _check_model_name(name: str) -> str:
    provider, sep, model = name.partition("/")
    if not sep or not provider.strip() or not model.strip():
        raise ValueError("a model table must be named '<provider>/<model>', e.g. 'openai/gpt-4o'")
    return name


ModelName = Annotated[str, AfterValidator(_check_model_name)]


class ModelPrice(BaseModel, extra="forbid", frozen=True):
    """List price of one model, in US dollars per million tokens."""

    input_usd_per_mtok: UsdPerMtok
    output_usd_per_mtok: UsdPerMtok


class ModelConfig(BaseModel, extra="forbid"):
    """One ``[models."<provider>/<model>"]`` table."""

    input_usd_per_mtok: UsdPerMtok | None = None
    output_usd_per_mtok: UsdPerMtok | None = None

    @model_validator(mode="after")
    def _both_prices_or_neither(self) -> ModelConfig:
        if (self.input_usd_per_mtok is None) != (self.output_usd_per_mtok is None):
            raise ValueError("give both input_usd_per_mtok and output_usd_per_mtok, or neither")
        return self

    @property
    def price(self) -> ModelPrice | None:
        if self.input_usd_per_mtok is None or self.output_usd_per_mtok is None:
            return None
        return ModelPrice(
            input_usd_per_mtok=self.input_usd_per_mtok,
            output_usd_per_mtok=self.output_usd_per_mtok,
        )


class ProvidersConfig(BaseModel, extra="forbid"):
    """The whole providers file."""

    models: dict[ModelName, ModelConfig] = Field(default_factory=dict)

    def prices(self) -> dict[str, ModelPrice]:
        return {name: cfg.price for name, cfg in self.models.items() if cfg.price is not None}


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
        return ProvidersConfig.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(path, text, exc) from None


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
    for error in exc.errors(include_url=False, include_input=False):
        loc = _clean_loc(error["loc"])
        if error["type"] == "extra_forbidden":
            reason = "unknown key" + _allowed_keys(loc[:-1])
        else:
            reason = error["msg"].removeprefix("Value error, ")
        problems.append((_find_line(text, loc), _dotted(loc), reason))
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


def _allowed_keys(parent: list[str]) -> str:
    model: type[BaseModel] | None = None
    if not parent:
        model = ProvidersConfig
    elif parent[0] == "models" and len(parent) == 2:
        model = ModelConfig
    if model is None:
        return ""
    return " (known keys: " + ", ".join(model.model_fields) + ")"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_KEY_LINE = re.compile(r"""^((?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-.\s])+?)\s*=""")
_HEADER_LINE = re.compile(r"^\[\[?(.+?)\]\]?\s*(?:#.*)?$")


def _dotted(loc: list[str]) -> str:
    return ".".join(part if _BARE_KEY.fullmatch(part) else f'"{part}"' for part in loc)


def _split_dotted(key: str) -> list[str] | None:
    """``models."openai/gpt-4o".x`` → ``["models", "openai/gpt-4o", "x"]`` (None if unparsable)."""
    parts: list[str] = []
    i = 0
    while i < len(key):
        char = key[i]
        if char in " \t.":
            i += 1
        elif char in "\"'":
            end = key.find(char, i + 1)
            if end < 0:
                return None
            parts.append(key[i + 1 : end])
            i = end + 1
        else:
            match = _BARE_KEY.match(key, i)
            if match is None:
                return None
            parts.append(match.group())
            i = match.end()
    return parts


def _find_line(text: str, loc: list[str]) -> int | None:
    """The line that defines ``loc`` (a key path), or else the line of its nearest enclosing
    table — where a missing key belongs. Found by scanning the text, as TOML parsers do not
    report positions of valid documents."""
    section: list[str] = []
    best_line: int | None = None
    best_len = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path: list[str] | None
        header = _HEADER_LINE.match(line) if line.startswith("[") else None
        if header:
            path = _split_dotted(header.group(1))
            section = path or []
        else:
            key = _KEY_LINE.match(line)
            if key is None:
                continue
            parts = _split_dotted(key.group(1))
            path = section + parts if parts is not None else None
        if not path:
            continue
        if path[: len(loc)] == loc:
            return lineno  # the key itself, or a table nested under it
        if loc[: len(path)] == path and len(path) > best_len:
            best_line, best_len = lineno, len(path)
    return best_line


# --- prices --------------------------------------------------------------------------------------


class PriceTable:
    """Model → price, and the cost of a call."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._prices = dict(prices)

    @classmethod
    def from_config(cls, config: ProvidersConfig) -> PriceTable:
        return cls(config.prices())

    @classmethod
    def from_file(cls, path: str | Path) -> PriceTable:
        return cls.from_config(load_providers_file(path))

    def __contains__(self, model: object) -> bool:
        return model in self._prices

    def __len__(self) -> int:
        return len(self._prices)

    def models(self) -> list[str]:
        return sorted(self._prices)

    def price(self, model: str) -> ModelPrice | None:
        return self._prices.get(model)

    def cost_usd(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """US dollars for a call to ``model`` ("provider/model"), to 8 decimals; ``None`` when the
        model has no price (the job still runs, its cost is unknown)."""
        price = self._prices.get(model)
        if price is None:
            return None
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError("token counts must be non-negative")
        cost = (
            Decimal(prompt_tokens) * price.input_usd_per_mtok
            + Decimal(completion_tokens) * price.output_usd_per_mtok
        ) / _PER_TOKENS
        return float(cost.quantize(_COST_QUANTUM, rounding=ROUND_HALF_EVEN))

    def __repr__(self) -> str:
        return f"PriceTable({len(self._prices)} models)"
