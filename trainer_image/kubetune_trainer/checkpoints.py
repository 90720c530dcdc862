"""Best-checkpoint choice, retention and early stopping: pure decisions over epoch records.

The case study sorted checkpoints by perplexity and then took the index from the wrong end of
the list, keeping the *worst* one. Here every decision is a min/sort by an explicit key with a
deterministic tie-break (earlier epoch wins), and tests pin sequences where that bug would fail.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CheckpointRecord:
    """One epoch's consolidated checkpoint and the validation perplexity that ranks it."""

    stage: str
    epoch: int
    uri: str
    validation_perplexity: float


def _rank_key(record: CheckpointRecord) -> tuple[float, int]:
    ppl = record.validation_perplexity
    return (ppl if not math.isnan(ppl) else math.inf, record.epoch)


def rank_checkpoints(records: Iterable[CheckpointRecord]) -> list[CheckpointRecord]:
    """Best first: lowest perplexity, then the earlier epoch; NaN ranks last."""
    return sorted(records, key=_rank_key)


def select_best_checkpoint(records: Iterable[CheckpointRecord]) -> CheckpointRecord | None:
    """The record with the minimum validation perplexity (None when there is none)."""
    ranked = rank_checkpoints(records)
    return ranked[0] if ranked else None


def checkpoints_to_delete(records: Sequence[CheckpointRecord], keep: int) -> list[CheckpointRecord]:
    """Everything but the `keep` best; what the trainer deletes after each epoch."""
    if keep < 1:
        raise ValueError("checkpointsToKeep must be at least 1")
    return rank_checkpoints(records)[keep:]


def can_be_kept(
    records: Sequence[CheckpointRecord], candidate: CheckpointRecord, keep: int
) -> bool:
    """Whether a new epoch would be among the `keep` best: only then is its full model
    gathered and written (with keep 1, only an epoch better than every kept checkpoint)."""
    return candidate in rank_checkpoints([*records, candidate])[:keep]


def epochs_without_improvement(perplexities: Sequence[float], min_delta: float = 0.0) -> int:
    """Epochs since the last one that beat the best so far by more than `min_delta`."""
    best = math.inf
    since = 0
    for ppl in perplexities:
        if not math.isnan(ppl) and ppl < best - min_delta:
            best, since = ppl, 0
        else:
            since += 1
    return since


def should_stop_early(
    perplexities: Sequence[float], patience: int | None, min_delta: float = 0.0
) -> bool:
    """Stop once `patience` epochs in a row failed to improve; never without a patience."""
    if patience is None:
        return False
    return epochs_without_improvement(perplexities, min_delta) >= patience
