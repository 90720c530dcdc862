"""Task presets: each a pure row -> (prompt, completion) transform with its special tokens.

The layout follows the case study: `<START_Q>question<END_Q><START_A>` is the prompt and
`answer<END_A>` the completion, where the last special token ends every completion and is the
stop token for generation. Tokens given in `task.specialTokens` replace the preset's: with four
or more, the first three mark question start, question end and answer start; with fewer, the
prompt is plain text ending in a newline. The last one is always the stop token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubetune_trainer.data.formatters import (
    RowError,
    format_options,
    render_template,
    require_text,
    strip_wrapping_quotes,
)

QA_TOKENS = ("<START_Q>", "<END_Q>", "<START_A>", "<END_A>")
CUSTOM_TOKENS = ("<END_A>",)
# The few-shot baseline's layout: plain text a base model can read, ending in a blank line
# (its stop sequence), instead of special tokens it has never seen and so never emits.
PLAIN_STOP = "\n\n"

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Frame:
    """Where the special tokens go around a (question, answer) pair."""

    start_q: str
    end_q: str
    start_a: str
    stop: str

    @classmethod
    def from_tokens(cls, tokens: Sequence[str]) -> Frame:
        if not tokens:
            raise ValueError("a task needs at least one special token (the stop token)")
        if len(tokens) >= 4:
            return cls(tokens[0], tokens[1], tokens[2], tokens[-1])
        return cls("", "\n", "", tokens[-1])

    def pair(self, question: str, answer: str) -> tuple[str, str]:
        return f"{self.start_q}{question}{self.end_q}{self.start_a}", f"{answer}{self.stop}"


PLAIN_FRAME = Frame("Question: ", "\n", "Answer: ", PLAIN_STOP)


def gsm8k_fields(row: Row) -> tuple[str, str]:
    """Question -> worked reasoning ending in '#### N' (the dataset's own answer text)."""
    answer = require_text(row, "answer")
    if "####" not in answer:
        raise RowError("answer without '#### N'")
    return require_text(row, "question").strip(), answer.strip()


def viggo_fields(row: Row) -> tuple[str, str]:
    """The case study's inverted ViGGO: utterance (`target`, CSV `ref`) -> meaning
    representation (`meaning_representation`, CSV `mr`)."""
    utterance = require_text(row, "target", "ref")
    meaning = require_text(row, "meaning_representation", "mr")
    return utterance.strip(), meaning.strip()


def sql_fields(row: Row) -> tuple[str, str]:
    """Question + CREATE TABLE context -> SQL; the context comes first so the question is
    read with the schema in view."""
    context = require_text(row, "context").strip()
    question = require_text(row, "question").strip()
    return f"{context}\n{question}", require_text(row, "answer").strip()


def mathqa_fields(row: Row) -> tuple[str, str]:
    """Problem + options -> rationale (wrapping quotes stripped) + 'Answer: letter'."""
    problem = require_text(row, "Problem").strip()
    options = format_options(require_text(row, "options"))
    rationale = strip_wrapping_quotes(require_text(row, "Rationale"))
    correct = require_text(row, "correct").strip().lower()
    return f"{problem}\n{options}", f"{rationale}\nAnswer: {correct}"


FIELD_EXTRACTORS: dict[str, Callable[[Row], tuple[str, str]]] = {
    "gsm8k": gsm8k_fields,
    "viggo": viggo_fields,
    "sql": sql_fields,
    "mathqa": mathqa_fields,
}
PRESETS = (*FIELD_EXTRACTORS, "custom")


@dataclass(frozen=True)
class Preset:
    """A task's formatting: call it on a row to get (prompt, completion)."""

    name: str
    special_tokens: tuple[str, ...]
    prompt_template: str | None = None
    completion_template: str | None = None

    @property
    def stop_token(self) -> str:
        return self.special_tokens[-1]

    def __call__(self, row: Row) -> tuple[str, str]:
        if self.name == "custom":
            assert self.prompt_template is not None and self.completion_template is not None
            prompt = render_template(self.prompt_template, row)
            return prompt, render_template(self.completion_template, row) + self.stop_token
        question, answer = FIELD_EXTRACTORS[self.name](row)
        return Frame.from_tokens(self.special_tokens).pair(question, answer)

    def plain(self, row: Row) -> tuple[str, str]:
        """(prompt, completion) as plain text for a base model: "Question: ...\\nAnswer: "
        and the answer ending in `PLAIN_STOP`."""
        if self.name == "custom":
            assert self.prompt_template is not None and self.completion_template is not None
            question = render_template(self.prompt_template, row)
            answer = render_template(self.completion_template, row)
        else:
            question, answer = FIELD_EXTRACTORS[self.name](row)
        return PLAIN_FRAME.pair(question.strip(), answer.strip())

    def prompt_only(self, row: Row) -> str:
        """The prompt alone (for generation); works on rows without the target field."""
        if self.name == "custom":
            assert self.prompt_template is not None
            return render_template(self.prompt_template, row)
        return self(row)[0]


def default_special_tokens(preset: str) -> tuple[str, ...]:
    return CUSTOM_TOKENS if preset == "custom" else QA_TOKENS


def make_preset(
    preset: str,
    special_tokens: Sequence[str] | None = None,
    prompt_template: str | None = None,
    completion_template: str | None = None,
) -> Preset:
    """The preset for a TaskSpec's fields (kept as plain values so this stays pydantic-free)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown task preset {preset!r}; known: {', '.join(PRESETS)}")
    if preset == "custom" and (prompt_template is None or completion_template is None):
        raise ValueError("preset custom needs promptTemplate and completionTemplate")
    tokens = tuple(special_tokens) if special_tokens else default_special_tokens(preset)
    return Preset(preset, tokens, prompt_template, completion_template)


def preset_for_task(task: Any) -> Preset:
    """make_preset from a kubetune TaskSpec (duck-typed)."""
    return make_preset(
        task.preset, task.special_tokens, task.prompt_template, task.completion_template
    )
