"""Pure text helpers the presets share: template rendering and MathQA's field quirks.

No torch, ray or I/O here (an import contract test enforces it), so every transform is
unit-testable on real rows in microseconds.
"""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Mapping
from typing import Any


class RowError(ValueError):
    """A row that cannot become a training example. `reason` groups rows in the data report
    (e.g. 'missing field answer'); the row number is added by the caller that knows it."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def template_fields(template: str) -> list[str]:
    """Top-level field names a str.format template refers to ('{a.b}' -> 'a')."""
    names = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field:
            names.append(re.split(r"[.\[]", field, maxsplit=1)[0])
    return names


def render_template(template: str, row: Mapping[str, Any]) -> str:
    """Fill a str.format template from a row; a missing or null field is a RowError that names
    the field, so a typo in a template is reported instead of producing empty prompts."""
    for name in template_fields(template):
        if name not in row or row[name] is None:
            raise RowError(f"missing field {name}", f"template {template!r} needs {{{name}}}")
    try:
        return template.format(**row)
    except (IndexError, KeyError, AttributeError, ValueError) as exc:
        raise RowError("template error", f"{template!r}: {exc}") from exc


def require_text(row: Mapping[str, Any], *names: str) -> str:
    """The first of `names` present in the row as text; RowError names the first alias if none."""
    for name in names:
        value = row.get(name)
        if value is not None and str(value).strip() != "":
            return str(value)
    raise RowError(f"missing field {names[0]}")


def strip_wrapping_quotes(text: str) -> str:
    """MathQA rationales are often wrapped in literal double quotes; remove one pair."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].strip()
    return text


_OPTION = re.compile(r"([a-e])\s*\)\s*(.*?)\s*(?=(?:,\s*[a-e]\s*\))|$)", re.S)


def parse_options(options: str) -> list[tuple[str, str]]:
    """MathQA options as (letter, text) pairs, from either 'a ) 1 , b ) 2' or the Python-list
    string form "['a ) 1', 'b ) 2']" that about 2% of rows use."""
    text = options.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            items = None
        if isinstance(items, list):
            text = " , ".join(str(item) for item in items)
    return [(letter, value.strip().rstrip(",").strip()) for letter, value in _OPTION.findall(text)]


def format_options(options: str) -> str:
    """Options one per line, 'a) text', or the raw text when it cannot be parsed."""
    parsed = parse_options(options)
    if not parsed:
        return options.strip()
    return "\n".join(f"{letter}) {value}" for letter, value in parsed)
