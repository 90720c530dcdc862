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

TOKEN_ENV = "HF_TOKEN"
BASE_SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


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
    return PreTrainedTokenizerFast(tokenizer_object=backend, **BASE_SPECIAL)


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
    """New rows of the embedding for the added tokens (mean-initialised by transformers)."""
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
