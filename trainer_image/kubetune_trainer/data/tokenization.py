"""Tokenization, loss masking, packing and per-epoch batching.

Loss masking: labels are -100 on prompt tokens (unless lossOnPrompt) and on padding, so the
loss is only ever computed on completion tokens; the completion always ends with the stop
token, and an example that does not fit the context is dropped and reported, never cut.

Packing: several examples share one sequence, WITHOUT attention across examples. Each packed
row carries `position_ids` that restart at 0 for every example and a block-diagonal causal 4D
attention mask (True = may attend), and the first token of every example gets label -100 so
no example is trained to predict the next example's start. Why this and not flash-attn varlen:
it is exact for the eager and SDPA attention paths that run everywhere (CPU tests included),
needs no extra kernel, and restarting positions keeps RoPE identical to the unpacked example,
so the packed loss equals the unpacked loss (a test checks it on the tiny model). The mask costs
L*L booleans per row (256 KiB at L=512), negligible next to activations.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One tokenized example and the source row it came from (1-based)."""

    row: int
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def completion_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


def encode_pair(
    tokenizer: Any, prompt: str, completion: str, loss_on_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of BOS + prompt + completion, and labels that cover the completion (and the
    prompt when asked). Prompt and completion are encoded separately so that generation,
    which sees only BOS + prompt, gets exactly the prefix the model was trained on."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt_ids = bos + tokenizer.encode(prompt, add_special_tokens=False)
    completion_ids = tokenizer.encode(completion, add_special_tokens=False)
    prompt_labels = list(prompt_ids) if loss_on_prompt else [IGNORE_INDEX] * len(prompt_ids)
    if bos and loss_on_prompt:
        prompt_labels[0] = IGNORE_INDEX
    return prompt_ids + completion_ids, prompt_labels + completion_ids


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """What generation feeds the model: the same prefix as in training."""
    return encode_pair(tokenizer, prompt, "")[0]


# --------------------------------------------------------------------------- packing


def pack_examples(examples: Sequence[Example], context_length: int) -> list[list[Example]]:
    """Greedy in-order packing: fill a sequence until the next example does not fit. Keeping
    the (shuffled) order makes packing change every epoch with the shuffle."""
    bins: list[list[Example]] = []
    used = context_length + 1
    for example in examples:
        length = len(example.input_ids)
        if length > context_length:
            raise ValueError(f"row {example.row} is longer than the context; filter it first")
        if used + length > context_length:
            bins.append([])
            used = 0
        bins[-1].append(example)
        used += length
    return bins


def collate_packed(bins: Sequence[Sequence[Example]], pad_id: int) -> dict[str, torch.Tensor]:
    """A batch of packed rows padded to the longest: input_ids, labels, position_ids and the
    block-diagonal causal mask (batch, 1, L, L)."""
    width = max(sum(len(e.input_ids) for e in packed) for packed in bins)
    batch = len(bins)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    mask = torch.zeros((batch, 1, width, width), dtype=torch.bool)
    for i, packed in enumerate(bins):
        start = 0
        for example in packed:
            end = start + len(example.input_ids)
            input_ids[i, start:end] = torch.tensor(example.input_ids)
            labels[i, start:end] = torch.tensor(example.labels)
            labels[i, start] = IGNORE_INDEX
            position_ids[i, start:end] = torch.arange(end - start)
            mask[i, 0, start:end, start:end] = torch.ones(end - start, end - start).tril().bool()
            start = end
        # Padding attends to itself only, so no row of the mask is empty (no NaN in softmax).
        mask[i, 0, torch.arange(start, width), torch.arange(start, width)] = True
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "attention_mask": mask,
    }


def collate_padded(
    examples: Sequence[Example], pad_id: int, pad_to: int | None = None
) -> dict[str, torch.Tensor]:
    """One example per row, right-padded (to the longest, or to `pad_to`), 2D padding mask."""
    width = pad_to or max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[i, :n] = torch.tensor(example.input_ids)
        labels[i, :n] = torch.tensor(example.labels)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


# --------------------------------------------------------------------------- epochs


def shuffled(examples: Sequence[Example], seed: int, epoch: int) -> list[Example]:
    """A new order every epoch, the same on every worker and on every retry."""
    order = list(examples)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def _units(examples: Sequence[Example], packing: bool, context_length: int) -> list[list[Example]]:
    return pack_examples(examples, context_length) if packing else [[e] for e in examples]


def _split_evenly(items: Sequence[Any], parts: int) -> list[list[Any]]:
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def batches_per_worker(units: int, world_size: int, batch_size: int, accumulation: int) -> int:
    """Micro-batches each worker runs per epoch: enough for its share of the units, rounded up
    to whole accumulation windows so every epoch ends on an optimizer step."""
    per_worker = -(-units // world_size)
    micro = max(1, -(-per_worker // batch_size))
    return -(-micro // accumulation) * accumulation


def worker_batches(
    examples: Sequence[Example],
    *,
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    batch_size: int,
    context_length: int,
    packing: bool,
    pad_id: int,
    accumulation: int = 1,
    shuffle: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """This worker's micro-batches for one epoch. Every worker gets the same number of
    batches (collective calls stay in step) and no example is dropped: the units are spread
    evenly over the batches, and a worker short of data gets all-ignored batches that add zero
    loss and zero gradient."""
    order = shuffled(examples, seed, epoch) if shuffle else list(examples)
    units = _units(order, packing, context_length)
    count = batches_per_worker(len(units), world_size, batch_size, accumulation)
    batches = []
    for chunk in _split_evenly(units[rank::world_size], count):
        filler = not chunk
        chunk = chunk or [units[0]]
        batch = (
            collate_packed(chunk, pad_id)
            if packing
            else collate_padded([unit[0] for unit in chunk], pad_id)
        )
        if filler:
            batch["labels"].fill_(IGNORE_INDEX)
        batches.append(batch)
    return batches


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token cross-entropy over labelled positions, and their count."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss, (shift_labels != IGNORE_INDEX).sum()


def model_inputs(
    batch: dict[str, torch.Tensor], model: Any, device: Any = None
) -> dict[str, torch.Tensor]:
    """The forward() arguments for a batch (labels stay out: the loss is computed here, token
    weighted). A packed batch's boolean block mask becomes an additive float mask for the eager
    attention path; SDPA takes the boolean mask as is."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    mask = inputs.get("attention_mask")
    config = getattr(model, "config", None)
    if (
        mask is not None
        and mask.dim() == 4
        and getattr(config, "_attn_implementation", "") == "eager"
    ):
        dtype = next(model.parameters()).dtype
        inputs["attention_mask"] = torch.zeros(mask.shape, dtype=dtype).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    if device is not None:
        inputs = {k: v.to(device) for k, v in inputs.items()}
    return inputs
