"""sql-create-context: question + CREATE TABLE context -> SQL, scored by execution."""

from __future__ import annotations

from kubetune.api.tasks import TASKS
from kubetune_trainer.data.formatters import require_text
from kubetune_trainer.evaluation import sql as scorer
from kubetune_trainer.tasks import Detail, Row, Task


def fields(row: Row) -> tuple[str, str]:
    """The context comes first so the question is read with the schema in view."""
    context = require_text(row, "context").strip()
    question = require_text(row, "question").strip()
    return f"{context}\n{question}", require_text(row, "answer").strip()


def score_example(prediction: str, reference: Row, strict: bool) -> Detail:
    return scorer.score_example(prediction, str(reference["context"]), str(reference["answer"]))


TASK = Task(
    TASKS["sql"],
    fields,
    score_example,
    scorer.aggregate,
    lambda details: {s: sum(d["status"] == s for d in details) for s in scorer.STATUSES},
)
