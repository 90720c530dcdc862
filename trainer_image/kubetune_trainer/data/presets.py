"""Task presets: each a pure row -> (prompt, completion) transform with its special tokens.

The layout follows the case study: `<START_Q>question<END_Q><START_A>` is the prompt and
`answer<END_A>` the completion, where the last special token ends every completion and is the
stop token for generation. Tokens given in `task.specialTokens` replace the preset's: with four
or more, the first three mark question start, question end and answer start; with fewer, the
prompt is plain text ending in a newline. The last one is always the stop token.

A chat task's rows are rendered by the model's chat template instead (`with_chat_template`,
bound once the tokenizer is loaded); its stop token is the template's end of turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kubetune.api.tasks import TASKS, task_info
from kubetune_trainer.data.formatters import render_template
from kubetune_trainer.tasks import chat, task

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


@dataclass(frozen=True)
class Preset:
    """A task's formatting: call it on a row to get (prompt, completion)."""

    name: str
    special_tokens: tuple[str, ...]
    prompt_template: str | None = None
    completion_template: str | None = None
    render: chat.Render | None = None  # the chat template, for a chat task

    @property
    def stop_token(self) -> str:
        return self.special_tokens[-1]

    @property
    def layout(self) -> str:
        return task_info(self.name).layout

    def with_chat_template(self, render: chat.Render) -> Preset:
        """This preset rendering chat rows with `render` (the tokenizer's chat template)."""
        return replace(self, render=render)

    def _chat_render(self) -> chat.Render:
        if self.render is None:
            raise ValueError(f"task {self.name}: no chat template bound (with_chat_template)")
        return self.render

    def _fields(self, row: Row) -> tuple[str, str]:
        """(question, answer) of the row: the task's own, or the user's templates."""
        fields = task(self.name).fields
        if fields is not None:
            return fields(row)
        assert self.prompt_template is not None and self.completion_template is not None
        return render_template(self.prompt_template, row), render_template(
            self.completion_template, row
        )

    def __call__(self, row: Row) -> tuple[str, str]:
        if self.layout == "chat":
            prompt, answer = chat.prompt_and_answer(chat.messages(row), self._chat_render())
            return prompt, answer + self.stop_token
        if self.layout == "template":
            prompt, answer = self._fields(row)
            return prompt, answer + self.stop_token
        question, answer = self._fields(row)
        return Frame.from_tokens(self.special_tokens).pair(question, answer)

    def segments(self, row: Row) -> list[tuple[str, bool]]:
        """The training text as (piece, in the loss) pieces: the prompt and the completion,
        or for a chat row every turn (assistant turns in the loss)."""
        if self.layout == "chat":
            return chat.segments(chat.messages(row), self._chat_render())
        prompt, completion = self(row)
        return [(prompt, False), (completion, True)]

    def training_text(self, row: Row) -> str:
        """The row's text for training the builtin model's tokenizer."""
        if self.layout == "chat":
            return chat.training_text(row)
        return "".join(self(row))

    def plain(self, row: Row) -> tuple[str, str]:
        """(prompt, completion) as plain text for a base model: "Question: ...\\nAnswer: "
        and the answer ending in `PLAIN_STOP`."""
        question, answer = self._fields(row)
        return PLAIN_FRAME.pair(question.strip(), answer.strip())

    def baseline_prompts(self, rows: Sequence[Row], shots: Sequence[Row]) -> list[str]:
        """What the base model is asked for each row, worked examples (`shots`, formatted
        once) first: plain text, or for a chat task the examples as earlier turns in the
        model's chat template."""
        if self.layout == "chat":
            render, examples = self._chat_render(), [chat.messages(shot) for shot in shots]
            return [
                render(chat.with_worked_examples(chat.messages(row), examples), True)
                for row in rows
            ]
        prefix = "".join("".join(self.plain(shot)) for shot in shots)
        return [prefix + self.plain(row)[0] for row in rows]

    @property
    def baseline_stop_text(self) -> str | None:
        """Text that ends a baseline answer besides the stop token: the plain layout's blank
        line; none for chat (an answer may hold blank lines; the template ends the turn)."""
        return None if self.layout == "chat" else PLAIN_STOP


def default_special_tokens(preset: str) -> tuple[str, ...]:
    return task_info(preset).special_tokens


def make_preset(
    preset: str,
    special_tokens: Sequence[str] | None = None,
    prompt_template: str | None = None,
    completion_template: str | None = None,
) -> Preset:
    """The preset for a TaskSpec's fields (kept as plain values so this stays pydantic-free)."""
    if preset not in TASKS:
        raise ValueError(f"unknown task preset {preset!r}; known: {', '.join(TASKS)}")
    if TASKS[preset].templated and (prompt_template is None or completion_template is None):
        raise ValueError(f"preset {preset} needs promptTemplate and completionTemplate")
    tokens = tuple(special_tokens) if special_tokens else default_special_tokens(preset)
    return Preset(preset, tokens, prompt_template, completion_template)


def preset_for_task(task: Any) -> Preset:
    """make_preset from a kubetune TaskSpec (duck-typed)."""
    return make_preset(
        task.preset, task.special_tokens, task.prompt_template, task.completion_template
    )
