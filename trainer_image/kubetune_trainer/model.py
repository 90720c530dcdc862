"""Models and tokenizers: the builtin offline Llamas, hub/local models, special tokens.

A builtin model (`BUILTIN_MODELS`) is a random-initialised LlamaForCausalLM with a byte-level
BPE tokenizer trained on the training text, saved as an ordinary HF checkpoint directory, so
every later step (special tokens, training, saving, generation) takes the same path as a real
model and nothing is downloaded. Built deterministically from the seed and the text.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from kubetune.api.models import (
    BUILTIN_MODELS,
    TINY_LLAMA,
    TINY_VOCAB,
)
from kubetune.api.tasks import CHAT_TOKENS

TOKEN_ENV = "HF_TOKEN"
RESIZE_SEED = 0
BASE_SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
# The builtin model's chat template: BOS, then each turn as <|role|>content<|end|> (the chat
# task's default special tokens).
BUILTIN_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>"
    "{{ message['content'] }}" + CHAT_TOKENS[-1] + "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = TINY_VOCAB) -> Any:
    """A byte-level BPE tokenizer (no unknown characters possible) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BASE_SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **BASE_SPECIAL)
    tokenizer.chat_template = BUILTIN_CHAT_TEMPLATE
    return tokenizer


def build_builtin_model(
    texts: Iterable[str], out_dir: Path, seed: int = 0, name: str = TINY_LLAMA
) -> Path:
    """Create the builtin model `name` + tokenizer checkpoint in `out_dir` (idempotent)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown builtin model {name!r}; available: {', '.join(BUILTIN_MODELS)}")
    if (out_dir / "config.json").exists():
        return out_dir
    tokenizer = train_bpe_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **BUILTIN_MODELS[name],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def hub_kwargs(revision: str | None) -> dict[str, Any]:
    """from_pretrained arguments: the revision and the token from the environment (the token
    reaches the pod through a secretKeyRef; it is never logged or reported)."""
    kwargs: dict[str, Any] = {}
    if revision:
        kwargs["revision"] = revision
    if os.environ.get(TOKEN_ENV):
        kwargs["token"] = os.environ[TOKEN_ENV]
    return kwargs


def load_tokenizer(path: str, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, **hub_kwargs(revision))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def add_special_tokens(tokenizer: Any, tokens: Sequence[str]) -> int:
    """Add the task's tokens (atomic, never split) and return how many were new."""
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if not missing:
        return 0
    existing = list(getattr(tokenizer, "additional_special_tokens", []) or [])
    return int(tokenizer.add_special_tokens({"additional_special_tokens": existing + missing}))


def chat_renderer(tokenizer: Any, stop_token: str, model: str) -> Any:
    """The tokenizer's chat template as a (messages, add_generation_prompt) -> text function,
    checked once on a probe conversation: it must exist, and end an assistant turn with the
    stop token generation stops at (the chat task's last special token)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"task chat: model {model} has no chat template (tokenizer_config.json"
            " chat_template); use an instruct/chat model or the builtin one"
        )

    def render(messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
        return str(
            tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        )

    probe = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    turn = render(probe, False)[len(render(probe[:1], True)) :]
    if stop_token not in turn:
        raise ValueError(
            f"task.specialTokens: model {model}'s chat template ends an assistant turn as"
            f" {turn!r}, without the stop token {stop_token!r}; name its end-of-turn token"
            " last in task.specialTokens (e.g. ['<|im_end|>'] or ['<|eot_id|>'])"
        )
    return render


def load_model(
    path: str,
    revision: str | None = None,
    dtype: Any = None,
    attn_implementation: str = "sdpa",
    device_map: str | None = None,
) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs = hub_kwargs(revision)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:  # "auto": layers split over the visible GPUs (accelerate)
        kwargs["device_map"] = device_map
    if attn_implementation == "flash_attention_2":
        require_flash_attention()
    return AutoModelForCausalLM.from_pretrained(
        path, attn_implementation=attn_implementation, **kwargs
    )


def require_flash_attention() -> None:
    """Fail at start-up, naming the field, rather than deep inside transformers."""
    import importlib.util

    import torch

    missing = [
        what
        for what, present in (
            ("the flash-attn package", importlib.util.find_spec("flash_attn") is not None),
            ("a CUDA GPU", torch.cuda.is_available()),
        )
        if not present
    ]
    if missing:
        raise RuntimeError(
            "training.attnImplementation: flash_attention_2 needs "
            + " and ".join(missing)
            + "; use sdpa (the default) or eager"
        )


def resize_for_tokenizer(model: Any, tokenizer: Any) -> None:
    """New rows of the embedding for the added tokens. transformers draws them at random
    (around the mean of the others); the draw is seeded here, so every copy of a model (each
    worker, each generating actor, each retry) gets the same rows and writes the same text."""
    import torch

    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RESIZE_SEED)
            model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
