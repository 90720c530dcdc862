"""GSM8k: pull the final number out of a worked solution and compare it with the gold one.

The dataset ends every solution with `#### N`, and a fine-tuned model learns to do the same.
The number after the first `####` that has one is the answer; thousands commas, a `$`, a sign,
decimals and trailing words (`#### 18 dollars`, `#### 18</s>`) are tolerated.

Fallback: an output with no `####` at all is scored on the *last* number it contains (the
usual convention for chat models that end with "... so the answer is 18."), and the example
is flagged `fallback: true` in the details. With `strict=True` (`kubetune eval --strict`)
such examples count as wrong, so a model is only credited for the format it was trained on.
An output whose `####` is followed by no number has no answer and is wrong either way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from kubetune_trainer.evaluation import InvalidReference, clean_output

_MARKER = "####"
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+\u2212]?)\s*\$?\s*(?P<inner_sign>[-+\u2212]?)"
    r"(?P<digits>\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)"
)


def _to_decimal(match: re.Match[str]) -> Decimal:
    negative = "-" in (match["sign"] + match["inner_sign"]).replace("\u2212", "-")
    value = Decimal(match["digits"].replace(",", ""))
    return -value if negative else value


def format_number(value: Decimal) -> str:
    """`1,080.00` and `1080` both print as `1080`: the details show what was compared."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "+0") else text


def _after_marker(text: str) -> Decimal | None:
    """The first number after the first `####` that is followed by one."""
    for part in text.split(_MARKER)[1:]:
        match = _NUMBER.search(part)
        if match:
            return _to_decimal(match)
    return None


def _last_number(text: str) -> Decimal | None:
    matches = list(_NUMBER.finditer(text))
    return _to_decimal(matches[-1]) if matches else None


def extract_answer(output: str) -> tuple[Decimal | None, bool]:
    """(number, used_fallback): the `####` answer, else the last number with the flag set."""
    text = clean_output(output)
    if _MARKER in text:
        return _after_marker(text), False
    return _last_number(text), True


def gold_answer(answer: str) -> Decimal:
    """The reference's final number: after `####`, or the whole field when it is a bare number
    (references written by hand rather than copied from the dataset)."""
    value = _after_marker(answer) if _MARKER in answer else _bare_number(answer)
    if value is None:
        raise InvalidReference("answer has no final number after '####'")
    return value


def _bare_number(text: str) -> Decimal | None:
    match = _NUMBER.fullmatch(text.strip())
    if not match:
        return None
    try:
        return _to_decimal(match)
    except InvalidOperation:
        return None


def score_example(prediction: str, reference: str, strict: bool = False) -> dict[str, object]:
    """Per-example fields: `extracted` (normalised number or None), `correct`, `fallback`."""
    gold = gold_answer(reference)
    extracted, fallback = extract_answer(prediction)
    matches = extracted is not None and extracted == gold
    return {
        "extracted": None if extracted is None else format_number(extracted),
        "gold": format_number(gold),
        "correct": matches and not (strict and fallback),
        "fallback": fallback,
    }


def aggregate(details: Sequence[dict[str, object]]) -> dict[str, float]:
    total = len(details)

    def fraction(predicate_count: int) -> float:
        return predicate_count / total if total else 0.0

    return {
        "accuracy": fraction(sum(bool(row["correct"]) for row in details)),
        "fallback_rate": fraction(sum(bool(row["fallback"]) for row in details)),
        "no_answer_rate": fraction(sum(row["extracted"] is None for row in details)),
    }
