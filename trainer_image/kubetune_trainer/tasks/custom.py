"""custom: the user's promptTemplate/completionTemplate; scored by exact match of the
completion (whitespace-normalised)."""

from __future__ import annotations

from collections.abc import Sequence

from kubetune.api.tasks import TASKS
from kubetune_trainer.metrics import normalize_text
from kubetune_trainer.tasks import Detail, Row, Task


def score_example(prediction: str, reference: Row, strict: bool) -> Detail:
    return {
        "exact_match": normalize_text(prediction) == normalize_text(str(reference["completion"]))
    }


def aggregate(details: Sequence[Detail]) -> dict[str, float]:
    return {"exact_match": sum(bool(d["exact_match"]) for d in details) / max(1, len(details))}


TASK = Task(TASKS["custom"], None, score_example, aggregate)
