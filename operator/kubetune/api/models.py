"""The model shapes kubetune knows without downloading anything: the builtin offline Llamas
(built by the trainer from these configs) and the Llama-2 family (their published
config.json values), by name. Pure data: the trainer builds from it and the planner sizes
from it, so a shape is written down once."""

from __future__ import annotations

from typing import Any

BUILTIN_PREFIX = "builtin:"
TINY_LLAMA = "builtin:tiny-llama"
SMALL_LLAMA = "builtin:small-llama"
# The builtin tokenizer's vocabulary (a byte-level BPE trained on the job's text).
TINY_VOCAB = 2048

_BUILTIN_SHARED: dict[str, Any] = {
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,  # like Llama-2: the output head has rows of its own
}
# The builtin models, by name (the one registry the runner, the planner and the docs read).
# tiny (0.9M parameters): the tests' model, the fastest that still learns.
# small (2.4M): the quick start's; on ViGGO it learns the task within 3 epochs on 2 CPU cores
# where tiny stalls at ~0.4 exact match (bench/bench_quality.py).
BUILTIN_MODELS: dict[str, dict[str, Any]] = {
    TINY_LLAMA: {"hidden_size": 128, "intermediate_size": 256, **_BUILTIN_SHARED},
    SMALL_LLAMA: {"hidden_size": 256, "intermediate_size": 512, **_BUILTIN_SHARED},
}


def _llama2(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int) -> dict:
    return {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    }


# config.json of meta-llama/Llama-2-{7,13,70}b-hf (and the -chat-hf variants, same shapes).
LLAMA2_CONFIGS: dict[str, dict[str, Any]] = {
    "7b": _llama2(4096, 11008, 32, 32, 32),
    "13b": _llama2(5120, 13824, 40, 40, 40),
    "70b": _llama2(8192, 28672, 80, 64, 8),
}


def known_config(name: str) -> dict[str, Any] | None:
    """The config of a model kubetune knows by name, or None (then a local config.json)."""
    if name in BUILTIN_MODELS:
        return {"vocab_size": TINY_VOCAB, **BUILTIN_MODELS[name]}
    repo = name.rsplit("/", 1)[-1].lower()
    for size, config in LLAMA2_CONFIGS.items():
        if repo in (f"llama-2-{size}-hf", f"llama-2-{size}-chat-hf", f"llama-2-{size}"):
            return config
    return None
