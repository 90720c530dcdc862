"""Tokenization, loss masking, packing and per-epoch batching.

Loss masking: labels are -100 on prompt tokens (unless lossOnPrompt) and on padding, so the
loss is only ever computed on completion tokens; the completion always ends with the stop
token, and an example that does not fit the context is dropped and reported, never cut.

Packing: several examples share one sequence, WITHOUT attention across examples. Examples are
placed best-fit decreasing (`pack_examples`). Each packed row carries `position_ids` that
restart at 0 for every example, and the first token of every example gets label -100 so no
example is trained to predict the next example's start. transformers turns the restarts into a
block-diagonal causal mask inside forward() for eager, SDPA and flash attention (flash uses
them as varlen boundaries), so a batch needs no mask of its own; the explicit (batch, 1, L, L)
boolean mask remains for libraries without that path (`block_mask`). Restarting positions keep
RoPE identical to the unpacked example, so the packed loss equals the unpacked loss (tests check
both mask paths, DDP included). Batches are collated one at a time (`WorkerBatches`), so host
memory grows with the batch, never with the epoch.
"""

from __future__ import annotations

import bisect
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


def _bos(tokenizer: Any, text: str) -> list[int]:
    """The BOS id to put first, unless there is none or the text writes it itself (chat
    templates do: a second one would give the model a prefix it never saw)."""
    if tokenizer.bos_token_id is None:
        return []
    if tokenizer.bos_token and text.startswith(tokenizer.bos_token):
        return []
    return [tokenizer.bos_token_id]


def encode_pieces(tokenizer: Any, segments: Sequence[tuple[str, bool]]) -> list[list[int]]:
    """Each segment's token ids, encoded on its own (no special tokens added)."""
    return [list(tokenizer.encode(text, add_special_tokens=False)) for text, _ in segments]


def encode_segments(
    tokenizer: Any,
    segments: Sequence[tuple[str, bool]],
    loss_on_prompt: bool = False,
    pieces: Sequence[list[int]] | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids of BOS + the segments, and labels that cover the segments marked for the
    loss (all of them with `loss_on_prompt`; never BOS). Segments are encoded separately so
    that generation, which sees BOS + the prompt, gets exactly the prefix trained on.
    `pieces`, when the caller has them, are the segments' `encode_pieces`."""
    if pieces is None:
        pieces = encode_pieces(tokenizer, segments)
    ids = _bos(tokenizer, segments[0][0] if segments else "")
    labels = [IGNORE_INDEX] * len(ids)
    for (_, trained), piece in zip(segments, pieces, strict=True):
        ids += piece
        labels += piece if trained or loss_on_prompt else [IGNORE_INDEX] * len(piece)
    return ids, labels


def encode_pair(
    tokenizer: Any, prompt: str, completion: str, loss_on_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """`encode_segments` of a prompt (not in the loss) and its completion (in the loss)."""
    return encode_segments(tokenizer, [(prompt, False), (completion, True)], loss_on_prompt)


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """What generation feeds the model: the same prefix as in training."""
    return encode_pair(tokenizer, prompt, "")[0]


# --------------------------------------------------------------------------- packing


def pack_examples(examples: Sequence[Example], context_length: int) -> list[list[Example]]:
    """Best-fit decreasing: longest example first, each into the fullest sequence it still
    fits. Fills ~98% of 512-token sequences on GSM8k where in-order next-fit fills ~80%
    (bench/bench_packing.py). The sequence count depends only on the lengths, so every epoch
    plans the same number of steps; examples of equal length keep their given (shuffled) order,
    so which examples share a sequence still changes from epoch to epoch."""
    for example in examples:
        if len(example.input_ids) > context_length:
            raise ValueError(f"row {example.row} is longer than the context; filter it first")
    bins: list[list[Example]] = []
    # (space left, bin index), sorted: the first entry with enough space is the best fit.
    spaces: list[tuple[int, int]] = []
    for example in sorted(examples, key=lambda e: -len(e.input_ids)):
        length = len(example.input_ids)
        at = bisect.bisect_left(spaces, (length, -1))
        if at == len(spaces):
            bins.append([example])
            space, index = context_length - length, len(bins) - 1
        else:
            space, index = spaces.pop(at)
            bins[index].append(example)
            space -= length
        bisect.insort(spaces, (space, index))
    return bins


def collate_packed(
    bins: Sequence[Sequence[Example]], pad_id: int, block_mask: bool = False
) -> dict[str, torch.Tensor]:
    """A batch of packed rows padded to the longest: input_ids, labels and position_ids that
    restart at 0 for every example. Without `block_mask` there is no attention_mask at all:
    transformers sees the restarts and builds the block-diagonal causal mask inside forward(),
    for one batch at a time and for every attention implementation (eager, sdpa, flash). With
    it, the (batch, 1, L, L) boolean mask is built here, for libraries without that path."""
    width = max(sum(len(e.input_ids) for e in packed) for packed in bins)
    batch = len(bins)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    mask = torch.zeros((batch, 1, width, width), dtype=torch.bool) if block_mask else None
    for i, packed in enumerate(bins):
        start = 0
        for example in packed:
            end = start + len(example.input_ids)
            input_ids[i, start:end] = torch.tensor(example.input_ids)
            labels[i, start:end] = torch.tensor(example.labels)
            labels[i, start] = IGNORE_INDEX
            position_ids[i, start:end] = torch.arange(end - start)
            if mask is not None:
                mask[i, 0, start:end, start:end] = (
                    torch.ones(end - start, end - start).tril().bool()
                )
            start = end
        if mask is not None:
            # Padding attends to itself only, so no row of the mask is empty (no NaN in softmax).
            mask[i, 0, torch.arange(start, width), torch.arange(start, width)] = True
    out = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if mask is not None:
        out["attention_mask"] = mask
    return out


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


def epoch_units(
    examples: Sequence[Example],
    *,
    epoch: int,
    seed: int,
    packing: bool,
    context_length: int,
    shuffle: bool = True,
) -> list[list[Example]]:
    """The epoch's training units (packed sequences, or single examples) in the order the
    epoch trains them: what both the loop and the step planning count."""
    order = shuffled(examples, seed, epoch) if shuffle else list(examples)
    if not packing:
        return [[e] for e in order]
    units = pack_examples(order, context_length)
    if shuffle:  # best-fit puts the longest first; the epoch sees its sequences in random order
        random.Random(seed * 1_000_003 + epoch + 500_009).shuffle(units)
    return units


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


class WorkerBatches(Sequence[dict[str, torch.Tensor]]):
    """One worker's micro-batches for an epoch, collated when asked for: only the batch in
    use is in memory, never the epoch's tensors (or masks) all at once."""

    def __init__(
        self, chunks: list[list[list[Example]]], fallback: list[Example], pad_id: int, **how: Any
    ):
        self.chunks, self.fallback, self.pad_id = chunks, fallback, pad_id
        self.packing: bool = how["packing"]
        self.block_mask: bool = how.get("block_mask", False)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        chunk = self.chunks[index] or [self.fallback]
        batch = (
            collate_packed(chunk, self.pad_id, self.block_mask)
            if self.packing
            else collate_padded([unit[0] for unit in chunk], self.pad_id)
        )
        if not self.chunks[index]:
            batch["labels"].fill_(IGNORE_INDEX)
        return batch

    def label_counts(self) -> list[int]:
        """Completion tokens that carry loss in each batch, counted from the examples (no
        tensors): what a token-weighted accumulation window divides by."""
        return [
            sum(example.completion_tokens for unit in chunk for example in unit)
            for chunk in self.chunks
        ]


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
    block_mask: bool = False,
) -> WorkerBatches:
    """This worker's micro-batches for one epoch. Every worker gets the same number of
    batches (collective calls stay in step) and no example is dropped: the units are spread
    evenly over the batches, and a worker short of data gets all-ignored batches that add zero
    loss and zero gradient."""
    units = epoch_units(
        examples,
        epoch=epoch,
        seed=seed,
        packing=packing,
        context_length=context_length,
        shuffle=shuffle,
    )
    count = batches_per_worker(len(units), world_size, batch_size, accumulation)
    chunks = _split_evenly(units[rank::world_size], count)
    return WorkerBatches(chunks, units[0], pad_id, packing=packing, block_mask=block_mask)


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


def bare_model(model: Any) -> Any:
    """The model inside DDP / DeepSpeed wrappers (they hold it as `.module` and have no
    `.config` of their own)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def packed_positions_supported() -> bool:
    """Whether transformers builds the packed block-diagonal mask from restarting
    position_ids by itself (masking_utils, transformers 5); otherwise batches carry the mask."""
    try:
        from transformers.masking_utils import find_packed_sequence_indices
    except ImportError:
        return False
    return callable(find_packed_sequence_indices)


def model_inputs(batch: dict[str, torch.Tensor], model: Any, device: Any = None) -> dict[str, Any]:
    """The forward() arguments for a batch (labels stay out: the loss is computed here, token
    weighted). No KV cache: transformers skips its packed-sequence mask whenever a cache is
    passed, and Llama makes one by default even in training unless told not to, which would
    let packed examples attend to each other. A packed batch's boolean block mask becomes an
    additive float mask for the eager attention path; SDPA takes the boolean mask as is."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    mask = inputs.get("attention_mask")
    bare = bare_model(model)
    if (
        mask is not None
        and mask.dim() == 4
        and getattr(bare.config, "_attn_implementation", "") == "eager"
    ):
        dtype = next(bare.parameters()).dtype
        inputs["attention_mask"] = torch.zeros(mask.shape, dtype=dtype).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    if device is not None:
        inputs = {k: v.to(device) for k, v in inputs.items()}
    return {**inputs, "use_cache": False}
