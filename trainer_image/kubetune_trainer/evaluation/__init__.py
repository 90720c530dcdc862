"""Scoring of model outputs for the case-study tasks: ViGGO, SQL by execution, GSM8k.

Everything in this package is pure Python (stdlib, sqlglot, pydantic): the same scorers run in
the trainer after training, in `kubetune eval` on a laptop, and in the unit tests, so none of
them may pull in torch, ray or transformers. `score_predictions` in `scoring.py` is the entry
point; the task modules hold the per-example logic.

`clean_output` lives here because every task needs it and the task modules must not import
each other.
"""

from __future__ import annotations

import re

# Tokens after which a model's output is no longer an answer: generation that ran past its
# end-of-sequence token (a missing stop criterion, a batch padded to its longest member).
END_TOKENS = (
    "</s>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<eos>",
    "<end_of_turn>",
)
_END_PATTERN = re.compile("|".join(re.escape(token) for token in END_TOKENS))
# Markers a tokenizer may leave anywhere in decoded text without meaning anything.
_SPECIAL_PATTERN = re.compile(
    r"<\|[A-Za-z0-9_ .:-]{1,40}\|>|</?s>|<pad>|<unk>|<bos>|<start_of_turn>|\[/?INST\]"
)


def clean_output(text: str) -> str:
    """The answer part of a raw model output: leading markers dropped, cut at the first
    end-of-sequence token, remaining markers removed, outer whitespace stripped.

    Leading markers go first so that an output that *starts* with `</s>` (a decoder that echoes
    the prompt's end) is not cut to nothing.
    """
    text = text.lstrip()
    while True:
        leading = _SPECIAL_PATTERN.match(text) or _END_PATTERN.match(text)
        if not leading:
            break
        text = text[leading.end() :].lstrip()
    end = _END_PATTERN.search(text)
    if end:
        text = text[: end.start()]
    return _SPECIAL_PATTERN.sub("", text).strip()


class InvalidReference(ValueError):
    """A reference row that no prediction could be scored against (the gold answer itself is
    malformed). Raised by the task scorers so the caller can name the file and line."""


__all__ = ["END_TOKENS", "InvalidReference", "clean_output"]
