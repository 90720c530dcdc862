"""Task behaviour, one module per task of the registry (`kubetune.api.tasks.TASKS`), found by
name: `kubetune_trainer.tasks.<name>` defines `TASK`, a `Task`.

A task module holds what is particular to it: how a data row becomes (question, answer) for
the preset's layout (None for a templated or chat task), how one prediction is scored against its
reference row, how verdicts add up to the registry's metrics, and the counts `kubetune eval`
prints. Task modules are pure Python (no torch, ray or transformers): they run in the
trainer, in `kubetune eval` on a laptop and in the unit tests.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from kubetune.api.tasks import TaskInfo, task_info

Row = Mapping[str, Any]
Detail = dict[str, object]


def _no_counts(details: Sequence[Detail]) -> dict[str, int]:
    return {}


@dataclass(frozen=True)
class Task:
    info: TaskInfo
    # row -> (question, answer) placed into the preset's layout; None: the user's templates
    fields: Callable[[Row], tuple[str, str]] | None
    # (prediction, reference row, strict) -> one verdict; reference rows hold the registry's
    # reference_fields
    score_example: Callable[[str, Row, bool], Detail]
    aggregate: Callable[[Sequence[Detail]], dict[str, float]]
    counts: Callable[[Sequence[Detail]], dict[str, int]] = _no_counts

    def __post_init__(self) -> None:
        if (self.fields is None) != (self.info.layout != "qa"):
            raise ValueError(
                f"task {self.info.name}: a qa task has a fields function, a templated or chat"
                " one none"
            )

    def reference(self, fields: Row, completion: str) -> dict[str, Any]:
        """A test row as a reference: its own fields, and the completion the preset made of
        it (tasks scored against the formatted answer read `completion`)."""
        return {**fields, "completion": completion}


@cache
def task(name: str) -> Task:
    """The behaviour of registry task `name` (ValueError naming the known ones otherwise)."""
    info = task_info(name)
    found: Task = importlib.import_module(f"{__name__}.{info.name}").TASK
    return found
