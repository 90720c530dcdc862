"""The one JSONL reader of the training data loader and the evaluation scorer.

Lines are split on "\\n" only: `str.splitlines()` also splits at U+2028/U+2029 (and \\v, \\f,
\\x1c-\\x1e, \\x85), which JSON allows raw inside strings, so it would cut such a row in two.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JsonlLine:
    """One non-blank line: its 1-based number and its value, or why it is not JSON."""

    number: int
    value: Any = None
    error: str | None = None


def iter_jsonl(text: str) -> Iterator[JsonlLine]:
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            yield JsonlLine(number, json.loads(line))
        except json.JSONDecodeError as error:
            yield JsonlLine(number, error=error.msg)
