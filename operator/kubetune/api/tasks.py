"""The task registry: what each task preset is, in one place.

Everything that names tasks reads this: the CRD's enum for `spec.task.preset` and its
description, the `kubetune predict` and `kubetune eval` choices, the headline metric the
status leads with, the reference fields `kubetune eval` checks, the preset's special tokens,
and the tasks table of the API reference and the README. The behaviour (row formatting,
scoring) is one trainer module per task, `kubetune_trainer.tasks.<name>`, found by name.

Adding a task: its module in `kubetune_trainer/tasks/` and one `TaskInfo` line below.

`SCORERS` is the registry of the scorers a user picks in `spec.task.scorer` for the tasks that
take one (`TaskInfo.user_scorer`): the CRD's enum, the rules and the docs read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

QA_TOKENS = ("<START_Q>", "<END_Q>", "<START_A>", "<END_A>")
STOP_ONLY_TOKENS = ("<END_A>",)
# The builtin model's chat template marks the roles and ends every turn with the last one.
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
CHAT_ROLES = ("system", "user", "assistant")

# How a task's rows become text: "qa" puts the task's (question, answer) between the special
# tokens; "template" renders the user's promptTemplate/completionTemplate; "chat" renders
# `messages` with the model's chat template.
Layout = Literal["qa", "template", "chat"]


@dataclass(frozen=True)
class TaskInfo:
    name: str
    summary: str  # what the model learns, one line
    headline: str  # the metric `.status.evaluation.score` reports
    metrics: tuple[str, ...]  # every metric the scorer reports, headline first
    reference_fields: tuple[str, ...]  # what a `kubetune eval` reference row must hold
    special_tokens: tuple[str, ...] = QA_TOKENS  # the last one is the stop token
    layout: Layout = "qa"

    def __post_init__(self) -> None:
        if self.metrics[0] != self.headline:
            raise ValueError(f"task {self.name}: the headline metric must come first")

    @property
    def templated(self) -> bool:
        """The user's promptTemplate/completionTemplate format the rows."""
        return self.layout == "template"

    @property
    def user_scorer(self) -> bool:
        """Scored by the scorer `spec.task.scorer` picks (exact match when unset): the tasks
        whose answers kubetune cannot know the shape of."""
        return self.layout != "qa"


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
            ("Rationale", "correct"),
        ),
        TaskInfo(
            "custom",
            "your promptTemplate/completionTemplate over the rows' fields",
            "exact_match",
            ("exact_match",),
            ("completion",),
            special_tokens=STOP_ONLY_TOKENS,
            layout="template",
        ),
        TaskInfo(
            "chat",
            "conversations (`messages`: system/user/assistant) in the model's chat template,"
            " loss on the assistant turns; scored on the last one",
            "exact_match",
            ("exact_match",),
            ("completion",),
            special_tokens=CHAT_TOKENS,
            layout="chat",
        ),
    )
}


@dataclass(frozen=True)
class ScorerInfo:
    name: str
    summary: str
    metrics: tuple[str, ...]  # headline first; empty: the user's function names its own
    option: str | None = None  # the ScorerSpec field this scorer needs (camelCase)


SCORERS: dict[str, ScorerInfo] = {
    scorer.name: scorer
    for scorer in (
        ScorerInfo(
            "exact_match",
            "the prediction equals the reference answer (whitespace-normalised)",
            ("exact_match",),
        ),
        ScorerInfo(
            "regex",
            "what `pattern` extracts (its first group, else the whole match) from the prediction"
            " equals what it extracts from the reference",
            ("regex_match", "extracted_rate"),
            "pattern",
        ),
        ScorerInfo(
            "json_fields",
            "the prediction is a JSON object whose `fields` equal the reference's",
            ("json_fields_match", "json_valid_rate"),
            "fields",
        ),
        ScorerInfo(
            "numeric",
            "the last number in the prediction is within `tolerance` of the reference's",
            ("numeric_match", "parsed_rate"),
        ),
        ScorerInfo(
            "python",
            "your function `module:function`(prediction: str, reference: dict) -> {metric:"
            " number}; each metric is averaged over the rows, the first is the headline",
            (),
            "entryPoint",
        ),
    )
}

if TYPE_CHECKING:
    ScorerKind = str
else:
    ScorerKind = Literal[tuple(SCORERS)]

if TYPE_CHECKING:
    TaskPreset = str
else:
    TaskPreset = Literal[tuple(TASKS)]


def task_info(name: str) -> TaskInfo:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def scoring_tasks() -> tuple[str, ...]:
    """The tasks `spec.task.scorer` applies to."""
    return tuple(name for name, task in TASKS.items() if task.user_scorer)


def scorer_description() -> str:
    return "; ".join(f"{s.name}: {s.summary}" for s in SCORERS.values()) + "."


def preset_description() -> str:
    """`spec.task.preset`'s description in the CRD and the API reference."""
    return "; ".join(f"{task.name}: {task.summary}" for task in TASKS.values()) + "."


def _code(text: str) -> str:
    """`text` as inline code in a Markdown table cell (a bare | would end the cell)."""
    return "`" + text.replace("|", "\\|") + "`"


def tasks_table() -> str:
    """Markdown tables of the registry (API reference and README): the tasks, then the
    scorers the chat and custom tasks take."""
    lines = [
        "| task | what the model learns | headline metric | other metrics | default special tokens |",
        "| --- | --- | --- | --- | --- |",
    ]
    for task in TASKS.values():
        others = ", ".join(_code(m) for m in task.metrics[1:]) or "-"
        tokens = " ".join(_code(t) for t in task.special_tokens)
        summary = task.summary.replace("|", "\\|")
        lines.append(
            f"| {_code(task.name)} | {summary} | {_code(task.headline)} | {others} | {tokens} |"
        )
    lines += [
        "",
        f"`spec.task.scorer` for {' and '.join(scoring_tasks())} (default `exact_match`):",
        "",
        "| scorer | a row is right when | metrics (headline first) | needs |",
        "| --- | --- | --- | --- |",
    ]
    for scorer in SCORERS.values():
        metrics = ", ".join(_code(m) for m in scorer.metrics) or "yours"
        needs = _code(scorer.option) if scorer.option else "-"
        lines.append(f"| {_code(scorer.name)} | {scorer.summary} | {metrics} | {needs} |")
    return "\n".join(lines) + "\n"
