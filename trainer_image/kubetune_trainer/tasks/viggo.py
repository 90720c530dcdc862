"""ViGGO, inverted as in the case study: utterance -> meaning representation."""

from __future__ import annotations

from kubetune.api.tasks import TASKS
from kubetune_trainer.data.formatters import require_text
from kubetune_trainer.evaluation import viggo as scorer
from kubetune_trainer.tasks import Detail, Row, Task


def fields(row: Row) -> tuple[str, str]:
    """Utterance (`target`, CSV `ref`) -> meaning representation (`meaning_representation`,
    CSV `mr`)."""
    utterance = require_text(row, "target", "ref")
    meaning = require_text(row, "meaning_representation", "mr")
    return utterance.strip(), meaning.strip()


def score_example(prediction: str, reference: Row, strict: bool) -> Detail:
    # The CSV form names the meaning representation `mr`: the preset's completion is it.
    meaning = reference.get("meaning_representation", reference.get("completion"))
    return scorer.score_example(prediction, str(meaning))


TASK = Task(
    TASKS["viggo"],
    fields,
    score_example,
    scorer.aggregate,
    lambda details: {"unparseable": sum(not d["parseable"] for d in details)},
)
