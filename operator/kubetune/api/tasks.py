"""The task registry: what each task preset is, in one place.

Everything that names tasks reads this: the CRD's enum for `spec.task.preset` and its
description, the `kubetune predict` and `kubetune eval` choices, the headline metric the
status leads with, the reference fields `kubetune eval` checks, the preset's special tokens,
and the tasks table of the API reference and the README. The behaviour (row formatting,
scoring) is one trainer module per task, `kubetune_trainer.tasks.<name>`, found by name.

Adding a task: its module in `kubetune_trainer/tasks/` and one `TaskInfo` line below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

QA_TOKENS = ("<START_Q>", "<END_Q>", "<START_A>", "<END_A>")
STOP_ONLY_TOKENS = ("<END_A>",)


@dataclass(frozen=True)
class TaskInfo:
    name: str
    summary: str  # what the model learns, one line
    headline: str  # the metric `.status.evaluation.score` reports
    metrics: tuple[str, ...]  # every metric the scorer reports, headline first
    reference_fields: tuple[str, ...]  # what a `kubetune eval` reference row must hold
    special_tokens: tuple[str, ...] = QA_TOKENS  # the last one is the stop token
    templated: bool = False  # the user's promptTemplate/completionTemplate format the rows

    def __post_init__(self) -> None:
        if self.metrics[0] != self.headline:
            raise ValueError(f"task {self.name}: the headline metric must come first")


TASKS: dict[str, TaskInfo] = {
    task.name: task
    for task in (
        TaskInfo(
            "viggo",
            "utterance -> meaning representation (ViGGO, inverted as in the case study)",
            "exact_match",
            (
                "exact_match",
                "function_accuracy",
                "attribute_accuracy",
                "attribute_order_accuracy",
                "unparseable_rate",
                "precedence_violation_rate",
            ),
            ("meaning_representation",),
        ),
        TaskInfo(
            "sql",
            "question + CREATE TABLE context -> SQL, scored by running both queries on SQLite",
            "execution_accuracy",
            ("execution_accuracy", "scorable", "wrong_result_rate", "prediction_error_rate"),
            ("context", "answer"),
        ),
        TaskInfo(
            "gsm8k",
            "math word problem -> worked reasoning ending in '#### N'",
            "accuracy",
            ("accuracy", "fallback_rate", "no_answer_rate"),
            ("answer",),
        ),
        TaskInfo(
            "mathqa",
            "problem + options -> rationale and 'Answer: letter'",
            "accuracy",
            ("accuracy", "exact_match"),
            ("completion",),
        ),
        TaskInfo(
            "custom",
            "your promptTemplate/completionTemplate over the rows' fields",
            "exact_match",
            ("exact_match",),
            ("completion",),
            special_tokens=STOP_ONLY_TOKENS,
            templated=True,
        ),
    )
}

if TYPE_CHECKING:
    TaskPreset = str
else:
    TaskPreset = Literal[tuple(TASKS)]


def task_info(name: str) -> TaskInfo:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def preset_description() -> str:
    """`spec.task.preset`'s description in the CRD and the API reference."""
    return "; ".join(f"{task.name}: {task.summary}" for task in TASKS.values()) + "."


def tasks_table() -> str:
    """Markdown table of the registry (API reference and README)."""
    lines = [
        "| task | what the model learns | headline metric | other metrics | default special tokens |",
        "| --- | --- | --- | --- | --- |",
    ]
    for task in TASKS.values():
        others = ", ".join(f"`{m}`" for m in task.metrics[1:]) or "-"
        tokens = " ".join(f"`{t}`" for t in task.special_tokens)
        lines.append(
            f"| `{task.name}` | {task.summary} | `{task.headline}` | {others} | {tokens} |"
        )
    return "\n".join(lines) + "\n"
