"""ViGGO meaning representations (MRs): parsing and per-example scoring.

An MR is a dialogue act with ordered slots, e.g.
`inform(name[Dirt: Showdown], esrb[E 10+ (for Everyone 10 and Older)], genres[driving/racing, sport])`.
Values may hold commas, slashes, colons and parentheses, and may be empty
(`request_attribute(has_mac_release[])`), so the parser scans brackets instead of splitting on
commas. The four per-example scores nest: a prediction with the wrong dialogue act gets nothing,
since the slots of one act say something different from the same slots in another.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from kubetune_trainer.evaluation import InvalidReference, clean_output

# The order in which ViGGO writes slots. It is a total order over every MR of the train,
# validation and test splits (checked by the tests); models that learn the task reproduce it,
# so breaking it is a cheap signal of a model that has not.
CANONICAL_ATTRIBUTE_ORDER: tuple[str, ...] = (
    "name",
    "exp_release_date",
    "release_year",
    "developer",
    "esrb",
    "rating",
    "genres",
    "player_perspective",
    "has_multiplayer",
    "platforms",
    "available_on_steam",
    "has_linux_release",
    "has_mac_release",
    "specifier",
)
_PRECEDENCE = {name: rank for rank, name in enumerate(CANONICAL_ATTRIBUTE_ORDER)}

_FUNCTION_START = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_ATTRIBUTE_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_ ]*?)\s*\[")
_WHITESPACE = re.compile(r"\s+")
_COMMA = re.compile(r"\s*,\s*")


class MRSyntaxError(ValueError):
    """Text that is not a meaning representation."""


@dataclass(frozen=True)
class MeaningRepresentation:
    function: str
    attributes: tuple[tuple[str, str], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.attributes)


@dataclass(frozen=True)
class ParsedOutput:
    """An MR found in a model output, and whether anything around it had to be ignored."""

    mr: MeaningRepresentation
    extra_text: bool


def normalize_value(value: str) -> str:
    """Values compare after whitespace normalisation: `driving/racing,sport` and
    `driving/racing, sport` list the same genres, while case and wording still count."""
    return _COMMA.sub(", ", _WHITESPACE.sub(" ", value).strip())


def _parse_value(text: str, start: int) -> tuple[str, int]:
    """The bracketed value opening just before `start`, and the index after its `]`.
    Nested brackets are balanced so a value may itself contain `[...]`."""
    depth = 1
    for index in range(start, len(text)):
        char = text[index]
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return text[start:index], index + 1
    raise MRSyntaxError("unclosed '[' in attribute value")


def _parse_attributes(text: str, start: int) -> tuple[list[tuple[str, str]], int]:
    """Slots from just after the opening parenthesis up to and including the closing one."""
    attributes: list[tuple[str, str]] = []
    position = start
    while True:
        rest = text[position:].lstrip()
        position = len(text) - len(rest)
        if rest.startswith(")") and not attributes:
            return attributes, position + 1
        match = _ATTRIBUTE_NAME.match(text, position)
        if not match:
            raise MRSyntaxError(f"expected an attribute at offset {position}")
        value, position = _parse_value(text, match.end())
        attributes.append((match.group(1), normalize_value(value)))
        rest = text[position:].lstrip()
        position = len(text) - len(rest)
        if rest.startswith(")"):
            return attributes, position + 1
        if not rest.startswith(","):
            raise MRSyntaxError(f"expected ',' or ')' at offset {position}")
        position += 1


def _parse_from(text: str, match: re.Match[str]) -> tuple[MeaningRepresentation, int]:
    attributes, end = _parse_attributes(text, match.end())
    names = [name for name, _ in attributes]
    if len(set(names)) != len(names):
        raise MRSyntaxError("an attribute appears twice")
    return MeaningRepresentation(match.group(1), tuple(attributes)), end


def parse_mr(text: str) -> MeaningRepresentation:
    """Parse text that must be exactly one MR (a reference); anything else is an error."""
    stripped = text.strip()
    match = _FUNCTION_START.match(stripped)
    if not match:
        raise MRSyntaxError("does not start with 'function('")
    mr, end = _parse_from(stripped, match)
    if stripped[end:].strip():
        raise MRSyntaxError(f"unexpected text after the MR: {stripped[end : end + 20]!r}")
    return mr


def extract_mr(output: str) -> ParsedOutput | None:
    """The first MR in a model output, tolerating chatter before it and a runaway continuation
    after it (flagged as `extra_text`); None when no MR parses."""
    text = clean_output(output)
    for match in _FUNCTION_START.finditer(text):
        try:
            mr, end = _parse_from(text, match)
        except MRSyntaxError:
            continue
        extra = bool(text[: match.start()].strip() or text[end:].strip())
        return ParsedOutput(mr, extra)
    return None


def breaks_precedence(names: Sequence[str]) -> bool:
    """Whether the known slot names appear out of canonical order (unknown names are ignored:
    they are already wrong on the attribute scores)."""
    ranks = [_PRECEDENCE[name] for name in names if name in _PRECEDENCE]
    return any(later < earlier for earlier, later in itertools.pairwise(ranks))


def score_example(prediction: str, reference: str) -> dict[str, object]:
    """Per-example booleans; the reference must parse (else `InvalidReference`)."""
    try:
        gold = parse_mr(reference)
    except MRSyntaxError as error:
        raise InvalidReference(f"meaning_representation does not parse: {error}") from None
    parsed = extract_mr(prediction)
    if parsed is None:
        return {
            "function_correct": False,
            "attributes_correct": False,
            "attributes_order_correct": False,
            "exact_match": False,
            "parseable": False,
            "breaks_precedence": False,
            "extra_text": False,
        }
    predicted = parsed.mr
    function_correct = predicted.function == gold.function
    return {
        "function_correct": function_correct,
        "attributes_correct": function_correct and set(predicted.names) == set(gold.names),
        "attributes_order_correct": function_correct and predicted.names == gold.names,
        "exact_match": function_correct and predicted.attributes == gold.attributes,
        "parseable": True,
        "breaks_precedence": breaks_precedence(predicted.names),
        "extra_text": parsed.extra_text,
    }


def _fraction(count: int, total: int) -> float:
    return count / total if total else 0.0


def aggregate(details: Sequence[dict[str, object]]) -> dict[str, float]:
    """Accuracies over all examples; the precedence rate is over parseable predictions only,
    since an unparseable output has no order to break."""
    total = len(details)
    parseable = sum(bool(row["parseable"]) for row in details)

    def count(field: str) -> int:
        return sum(bool(row[field]) for row in details)

    return {
        "function_accuracy": _fraction(count("function_correct"), total),
        "attribute_accuracy": _fraction(count("attributes_correct"), total),
        "attribute_order_accuracy": _fraction(count("attributes_order_correct"), total),
        "exact_match": _fraction(count("exact_match"), total),
        "unparseable_rate": _fraction(total - parseable, total),
        "precedence_violation_rate": _fraction(count("breaks_precedence"), parseable),
    }
