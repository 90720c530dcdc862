"""chat: rows of `messages` ({role, content}; roles system, user, assistant) rendered with the
model's chat template; the loss covers every assistant turn, and evaluation generates the last
assistant turn from the conversation before it. Scored by `spec.task.scorer` (exact match of
the last assistant turn when unset).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kubetune.api.tasks import CHAT_ROLES, TASKS
from kubetune_trainer.data.formatters import RowError
from kubetune_trainer.tasks import Row, Task
from kubetune_trainer.tasks.scorers import exact_match, mean_metrics

Message = dict[str, str]
# (messages, add_generation_prompt) -> text: the tokenizer's chat template
Render = Callable[[Sequence[Message], bool], str]


def messages(row: Row) -> list[Message]:
    """The row's conversation, checked: every message a {role, content} with a known role, at
    least one user turn, and an assistant answer last."""
    found = row.get("messages")
    if not isinstance(found, list) or not found:
        raise RowError("missing field messages", "a chat row holds a non-empty messages list")
    checked = []
    for index, message in enumerate(found):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise RowError("message without text content", f"messages[{index}]")
        if message.get("role") not in CHAT_ROLES:
            raise RowError(
                "unknown message role",
                f"messages[{index}].role {message.get('role')!r} is not one of {CHAT_ROLES}",
            )
        checked.append({"role": str(message["role"]), "content": message["content"]})
    if checked[-1]["role"] != "assistant":
        raise RowError("last message is not the assistant's", "the answer ends the conversation")
    if not any(message["role"] == "user" for message in checked):
        raise RowError("no user message")
    return checked


def segments(conversation: Sequence[Message], render: Render) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is an assistant turn) pieces: what the
    template adds before each assistant turn (with its generation prompt), then the turn
    itself as the template writes it (end-of-turn token included). Each piece is the text
    between two renderings of a growing conversation, so the pieces join to the whole."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for index, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        before = render(conversation[:index], True)
        through = render(conversation[: index + 1], False)
        if not before.startswith(done) or not through.startswith(before):
            raise RowError(
                "chat template is not incremental",
                "rendering more turns changed the text of the earlier ones",
            )
        pieces += [(before[len(done) :], False), (through[len(before) :], True)]
        done = through
    return pieces


def prompt_and_answer(conversation: Sequence[Message], render: Render) -> tuple[str, str]:
    """What generation starts from (everything before the last assistant turn, with the
    generation prompt) and the answer expected (that turn's content)."""
    return render(conversation[:-1], True), conversation[-1]["content"]


def with_worked_examples(
    conversation: Sequence[Message], shots: Sequence[Sequence[Message]]
) -> list[Message]:
    """The conversation before its last answer, with each worked example's user and
    assistant turns as earlier turns of it: the baseline asks an instruct model in the form
    it was tuned on. The row's leading system messages stay first (templates refuse a system
    message later on); the examples' own system messages are left out."""
    system = 0
    while conversation[system]["role"] == "system":
        system += 1
    examples = [m for shot in shots for m in shot if m["role"] != "system"]
    return [*conversation[:system], *examples, *conversation[system:-1]]


def training_text(row: Row) -> str:
    """The row's words, for training the builtin model's tokenizer."""
    return "\n".join(message["content"] for message in messages(row))


TASK = Task(TASKS["chat"], None, lambda p, r, strict: exact_match(p, r), mean_metrics)
