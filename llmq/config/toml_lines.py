"""Where a key of a TOML document is defined: ``tomllib`` reports no positions for a valid
document, so the providers file's errors find the line of a key path by scanning the text."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["KEY_LINE", "dotted", "is_index", "locate"]


def is_index(loc: Sequence[str]) -> bool:
    return bool(loc) and loc[-1].isdigit()


BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
KEY_LINE = re.compile(r"""^((?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-.\s])+?)\s*=""")
HEADER_LINE = re.compile(r"^\[\[?(.+?)\]\]?\s*(?:#.*)?$")


def dotted(loc: Sequence[str]) -> str:
    return ".".join(part if BARE_KEY.fullmatch(part) else f'"{part}"' for part in loc)


def split_dotted(key: str) -> list[str] | None:
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
            match = BARE_KEY.match(key, i)
            if match is None:
                return None
            parts.append(match.group())
            i = match.end()
    return parts


def locate(text: str, loc: list[str], element: str | None) -> int | None:
    """The line of ``loc``; for an element of an array (``loc`` ends in its index) whose value
    is the string ``element``, the line holding that string when the array spans lines."""
    line = find_line(text, loc)
    if line is None or element is None or not is_index(loc):
        return line
    lines = text.splitlines()
    quoted = (f'"{element}"', f"'{element}'")
    for lineno in range(line, min(len(lines), line + 200) + 1):
        source = lines[lineno - 1]
        if lineno > line and (KEY_LINE.match(source.strip()) or source.strip().startswith("[")):
            break  # the array ended without the element: keep the key's line
        if any(q in source for q in quoted):
            return lineno
    return line


def find_line(text: str, loc: list[str]) -> int | None:
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
        header = HEADER_LINE.match(line) if line.startswith("[") else None
        if header:
            path = split_dotted(header.group(1))
            section = path or []
        else:
            key = KEY_LINE.match(line)
            if key is None:
                continue
            parts = split_dotted(key.group(1))
            path = section + parts if parts is not None else None
        if not path:
            continue
        if path[: len(loc)] == loc:
            return lineno  # the key itself, or a table nested under it
        if loc[: len(path)] == path and len(path) > best_len:
            best_line, best_len = lineno, len(path)
    return best_line
