"""Parameter counts of a Llama-shaped decoder, from its config alone (no weights, no torch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.api.models import known_config


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """From the keys of a transformers config.json (LlamaConfig and its relatives)."""
        heads = int(config["num_attention_heads"])
        return cls(
            hidden=int(config["hidden_size"]),
            intermediate=int(config["intermediate_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", False)),
        )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def _linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection in one decoder layer, by its module name."""
        h, i, kv = self.hidden, self.intermediate, self.kv_width
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def layer_params(self) -> int:
        """One decoder layer: its projections and two RMSNorm weights."""
        return sum(a * b for a, b in self._linear_shapes().values()) + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def parameters(self) -> int:
        heads = 1 if self.tied else 2  # input embedding, and an untied output head
        return heads * self.embedding_params + self.layers * self.layer_params + self.hidden

    @property
    def largest_module_params(self) -> int:
        """The most parameters one module holds directly: what ZeRO-3 gathers at once
        (DeepSpeed's `model_to_params` takes the same maximum)."""
        return max(self.embedding_params, *(a * b for a, b in self._linear_shapes().values()))

    def lora_params(self, rank: int, targets: Sequence[str]) -> int:
        """Adapter parameters: r x (in + out) for each targeted projection of every layer."""
        shapes = self._linear_shapes()
        return self.layers * sum(rank * sum(shapes[t]) for t in targets if t in shapes)


def shape_of(model_name: str, local_config: Mapping[str, Any] | None = None) -> ModelShape | None:
    """The shape of a model by name (builtin or Llama-2), else from its local config.json
    (read by the caller), else None: the plan then says the model's size is unknown."""
    config = known_config(model_name) or local_config
    return ModelShape.from_config(config) if config else None
