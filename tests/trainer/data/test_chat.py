"""Chat rows: rendered with the tokenizer's chat template (the builtin model's own), the loss on
every assistant turn and nothing else, generation fed exactly the prefix trained on, and bad
rows or templates refused with the reason."""

from __future__ import annotations

import copy

import pytest

from kubetune.api.tasks import CHAT_TOKENS
from kubetune_trainer.data.prepare import DropLog, tokenize_rows
from kubetune_trainer.data.prepare import test_rows as prepared_test_rows
from kubetune_trainer.data.presets import make_preset
from kubetune_trainer.data.tokenization import IGNORE_INDEX, encode_segments, prompt_ids
from kubetune_trainer.model import add_special_tokens, chat_renderer, load_tokenizer
from tests.trainer.conftest import read_jsonl

pytestmark = pytest.mark.unit
SYSTEM = "Turn the utterance into a meaning representation."


def viggo_chats(rows: list[dict], turns: int) -> list[dict]:
    """ViGGO rows as conversations of `turns` user/assistant exchanges after a system line."""
    chats = []
    for start in range(0, len(rows) - turns + 1, turns):
        messages = [{"role": "system", "content": SYSTEM}]
        for row in rows[start : start + turns]:
            messages.append({"role": "user", "content": row["target"]})
            messages.append({"role": "assistant", "content": row["meaning_representation"]})
        chats.append({"messages": messages})
    return chats


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    add_special_tokens(tokenizer, CHAT_TOKENS)
    return tokenizer


@pytest.fixture(scope="module")
def chat_preset(chat_tokenizer, tiny_model_dir):
    preset = make_preset("chat")
    return preset.with_chat_template(chat_renderer(chat_tokenizer, preset.stop_token, "builtin"))


@pytest.fixture(scope="module")
def chats(datasets_dir):
    return viggo_chats(read_jsonl(datasets_dir / "viggo" / "viggo-train.jsonl", limit=12), 3)


def test_the_loss_covers_every_assistant_turn_and_nothing_else(chat_tokenizer, chat_preset, chats):
    chat = chats[0]
    segments = chat_preset.segments(chat)
    whole = chat_preset.render(chat["messages"], False)
    assert "".join(text for text, _ in segments) == whole
    ids, labels = encode_segments(chat_tokenizer, segments)
    assert ids[0] == chat_tokenizer.bos_token_id and ids.count(chat_tokenizer.bos_token_id) == 1
    trained = [token for token, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    answers = [m["content"] + "<|end|>" for m in chat["messages"] if m["role"] == "assistant"]
    assert chat_tokenizer.decode(trained) == "".join(answers)
    # The user turns and the system line are never in the loss.
    assert all(
        label == IGNORE_INDEX
        for token, label in zip(ids, labels, strict=True)
        if token == chat_tokenizer.convert_tokens_to_ids("<|user|>")
    )


def test_generation_is_fed_the_prefix_training_saw(chat_tokenizer, chat_preset, chats):
    chat = chats[1]
    (row,) = prepared_test_rows([(1, chat)], chat_preset, DropLog())
    assert row.completion == chat["messages"][-1]["content"]
    assert row.prompt.endswith("<|assistant|>")
    ids, _ = encode_segments(chat_tokenizer, chat_preset.segments(chat))
    prefix = prompt_ids(chat_tokenizer, row.prompt)
    assert ids[: len(prefix)] == prefix  # one BOS, from the template, not a second one


def test_bad_chat_rows_are_dropped_with_the_reason(chat_tokenizer, chat_preset, chats):
    good = chats[0]
    bad_role = copy.deepcopy(good)
    bad_role["messages"][1]["role"] = "bot"
    unanswered = copy.deepcopy(good)
    unanswered["messages"].pop()
    no_user = {"messages": [{"role": "assistant", "content": "hello"}]}
    no_text = {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}
    rows = list(enumerate([good, {"text": "x"}, bad_role, unanswered, no_user, no_text], start=1))
    drops = DropLog()
    examples = tokenize_rows(rows, chat_preset, chat_tokenizer, 2048, False, drops)
    assert [e.row for e in examples] == [1]
    assert dict(drops.by_reason) == {
        "missing field messages": [2],
        "unknown message role": [3],
        "last message is not the assistant's": [4],
        "no user message": [5],
        "message without text content": [6],
    }


def test_a_template_without_the_stop_token_or_no_template_is_refused(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    with pytest.raises(
        ValueError, match=r"without the stop token '<\|im_end\|>'.*task.specialTokens"
    ):
        chat_renderer(tokenizer, "<|im_end|>", "builtin")
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="model m has no chat template"):
        chat_renderer(tokenizer, "<|end|>", "m")


def test_a_template_that_rewrites_earlier_turns_is_refused(chat_tokenizer, chats):
    def shifting(messages, add_generation_prompt):  # numbers turns from the end
        text = "".join(f"{len(messages) - i}:{m['content']}<|end|>" for i, m in enumerate(messages))
        return text + ("<|assistant|>" if add_generation_prompt else "")

    preset = make_preset("chat").with_chat_template(shifting)
    drops = DropLog()
    assert tokenize_rows([(1, chats[0])], preset, chat_tokenizer, 2048, False, drops) == []
    assert list(drops.by_reason) == ["chat template is not incremental"]


def test_the_baseline_asks_with_worked_examples_as_earlier_turns(chat_preset, chats):
    """An instruct model is asked in the form it was tuned on: the row's system message, each
    worked example's user and assistant turns, then the row's own turns, in the chat template,
    ending where the model writes the answer (no blank-line stop: the template ends the turn)."""
    row, shots = chats[0], chats[1:3]
    (prompt,) = chat_preset.baseline_prompts([row], shots)
    conversation = row["messages"]
    assert prompt == chat_preset.render(
        [
            conversation[0],
            *(m for shot in shots for m in shot["messages"] if m["role"] != "system"),
            *conversation[1:-1],
        ],
        True,
    )
    assert prompt.count(SYSTEM) == 1
    assert all(m["content"] in prompt for shot in shots for m in shot["messages"][1:])
    assert prompt.endswith("<|assistant|>")
    # With no examples it is the prompt the tuned model is evaluated on.
    assert chat_preset.baseline_prompts([row], []) == [chat_preset(row)[0]]
    assert chat_preset.baseline_stop_text is None
    assert make_preset("gsm8k").baseline_stop_text == "\n\n"
