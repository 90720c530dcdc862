"""Best-checkpoint choice, retention and early stopping (the anchor picked from the wrong end)."""

from __future__ import annotations

import math

import pytest

from kubetune_trainer.checkpoints import (
    CheckpointRecord,
    can_be_kept,
    checkpoints_to_delete,
    epochs_without_improvement,
    rank_checkpoints,
    select_best_checkpoint,
    should_stop_early,
)

pytestmark = pytest.mark.unit


def records(*ppls: float) -> list[CheckpointRecord]:
    return [CheckpointRecord("s", i, f"mem://e{i}", p) for i, p in enumerate(ppls, start=1)]


def anchor_pick(recs: list[CheckpointRecord]) -> CheckpointRecord:
    """The case study's bug: sort ascending by perplexity, then take the last element."""
    return sorted(recs, key=lambda r: r.validation_perplexity)[-1]


@pytest.mark.parametrize(
    "ppls, best_epoch",
    [
        ((9.0, 5.0, 7.0), 2),  # minimum in the middle
        ((3.0, 4.0, 5.0, 6.0), 1),  # overfitting from epoch 2: best is the first
        ((8.0, 6.0, 4.0, 2.0), 4),  # still improving: best is the last
        ((5.0, 4.0, 4.0, 6.0), 2),  # tie: the earlier epoch wins
    ],
)
def test_best_is_the_minimum_perplexity(ppls, best_epoch):
    recs = records(*ppls)
    best = select_best_checkpoint(recs)
    assert best is not None and best.epoch == best_epoch
    assert anchor_pick(recs).epoch != best_epoch  # the anchor's choice would fail here


def test_nan_never_wins_and_empty_has_no_best():
    assert select_best_checkpoint(records(math.nan, 7.0, math.nan)).epoch == 2
    assert select_best_checkpoint([]) is None


def test_retention_keeps_the_k_best_not_the_k_latest():
    recs = records(3.0, 9.0, 2.0, 8.0, 4.0)
    assert [r.epoch for r in checkpoints_to_delete(recs, keep=2)] == [5, 4, 2]
    assert [r.epoch for r in rank_checkpoints(recs)][:2] == [3, 1]
    assert checkpoints_to_delete(recs, keep=10) == []
    with pytest.raises(ValueError):
        checkpoints_to_delete(recs, keep=0)


def test_early_stopping_counts_epochs_without_improvement():
    assert epochs_without_improvement([5.0, 4.0, 4.5, 4.2]) == 2
    assert should_stop_early([5.0, 4.0, 4.5, 4.2], patience=2)
    assert not should_stop_early([5.0, 4.0, 4.5, 3.9], patience=2)
    assert not should_stop_early([5.0, 6.0, 7.0], patience=None)


def test_min_delta_requires_a_real_improvement():
    assert epochs_without_improvement([5.0, 4.95, 4.9], min_delta=0.2) == 2
    assert should_stop_early([5.0, 4.95, 4.9], patience=2, min_delta=0.2)


@pytest.mark.parametrize(
    ("kept", "new", "keep", "written"),
    [
        ((3.0,), 2.0, 1, True),  # better than every kept checkpoint
        ((3.0,), 4.0, 1, False),  # worse: its full model is never gathered nor written
        ((3.0,), 3.0, 1, False),  # a tie goes to the earlier epoch
        ((3.0, 5.0), 4.0, 2, True),  # among the two best
        ((3.0, 5.0), 6.0, 2, False),
        ((), math.nan, 1, True),  # the first epoch is always kept, even diverged
        ((3.0,), math.nan, 1, False),
    ],
)
def test_only_epochs_that_can_be_kept_are_written(kept, new, keep, written):
    previous = records(*kept)
    candidate = CheckpointRecord("s", len(kept) + 1, "mem://new", new)
    assert can_be_kept(previous, candidate, keep) is written
