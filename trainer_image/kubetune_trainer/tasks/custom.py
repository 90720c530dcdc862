"""custom: the user's promptTemplate/completionTemplate; scored by `spec.task.scorer`, exact
match of the completion (whitespace-normalised) when it is unset."""

from __future__ import annotations

from kubetune.api.tasks import TASKS
from kubetune_trainer.tasks import Task
from kubetune_trainer.tasks.scorers import exact_match, mean_metrics

TASK = Task(TASKS["custom"], None, lambda p, r, strict: exact_match(p, r), mean_metrics)
