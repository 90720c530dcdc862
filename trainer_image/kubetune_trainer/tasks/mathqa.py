"""MathQA: problem + options -> rationale and 'Answer: letter'; scored on the letter."""

from __future__ import annotations

from collections.abc import Sequence

from kubetune.api.tasks import TASKS
from kubetune_trainer.data.formatters import format_options, require_text, strip_wrapping_quotes
from kubetune_trainer.metrics import mathqa_letter, normalize_text
from kubetune_trainer.tasks import Detail, Row, Task


def fields(row: Row) -> tuple[str, str]:
    """Problem + options -> rationale (wrapping quotes stripped) + 'Answer: letter'."""
    problem = require_text(row, "Problem").strip()
    options = format_options(require_text(row, "options"))
    rationale = strip_wrapping_quotes(require_text(row, "Rationale"))
    correct = require_text(row, "correct").strip().lower()
    return f"{problem}\n{options}", f"{rationale}\nAnswer: {correct}"


def score_example(prediction: str, reference: Row, strict: bool) -> Detail:
    # In a job the reference carries the formatted answer; a MathQA file as distributed
    # (what `kubetune eval` is given) has its Rationale and correct letter instead.
    completion = str(reference.get("completion") or fields(reference)[1])
    gold = mathqa_letter(completion)
    return {
        "answer_correct": gold is not None and mathqa_letter(prediction) == gold,
        "exact_match": normalize_text(prediction) == normalize_text(completion),
    }


def aggregate(details: Sequence[Detail]) -> dict[str, float]:
    count = max(1, len(details))
    return {
        "accuracy": sum(bool(d["answer_correct"]) for d in details) / count,
        "exact_match": sum(bool(d["exact_match"]) for d in details) / count,
    }


TASK = Task(TASKS["mathqa"], fields, score_example, aggregate)
