"""GSM8k: math word problem -> worked reasoning ending in '#### N'."""

from __future__ import annotations

from kubetune.api.tasks import TASKS
from kubetune_trainer.data.formatters import RowError, require_text
from kubetune_trainer.evaluation import gsm8k as scorer
from kubetune_trainer.tasks import Detail, Row, Task


def fields(row: Row) -> tuple[str, str]:
    """Question -> worked reasoning ending in '#### N' (the dataset's own answer text)."""
    answer = require_text(row, "answer")
    if "####" not in answer:
        raise RowError("answer without '#### N'")
    return require_text(row, "question").strip(), answer.strip()


def score_example(prediction: str, reference: Row, strict: bool) -> Detail:
    return scorer.score_example(prediction, str(reference["answer"]), strict=strict)


TASK = Task(
    TASKS["gsm8k"],
    fields,
    score_example,
    scorer.aggregate,
    lambda details: {
        "correct": sum(bool(d["correct"]) for d in details),
        "fallback": sum(bool(d["fallback"]) for d in details),
    },
)
