"""Token-weighted losses, perplexity, ETA, LR schedule and exact-match scoring."""

from __future__ import annotations

import math

import pytest

from kubetune_trainer.metrics import (
    TokenLoss,
    eta_seconds,
    lr_multiplier,
    mathqa_letter,
    optimizer_steps_per_epoch,
    perplexity,
    warmup_steps,
)

pytestmark = pytest.mark.unit


def test_loss_is_weighted_by_tokens_not_by_batches():
    # batch A: 10 tokens at mean 1.0, batch B: 1 token at loss 12.0
    total = TokenLoss(10.0, 10).merge([TokenLoss(12.0, 1)])
    assert total.mean == pytest.approx(22.0 / 11)  # a mean of batch means would say 6.5
    assert math.isnan(TokenLoss().mean)


def test_perplexity_is_exp_of_loss_and_never_overflows():
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert perplexity(10_000.0) == math.inf
    assert math.isnan(perplexity(math.nan))


def test_eta_from_the_average_pace():
    assert eta_seconds(30.0, 10, 40) == 90
    assert eta_seconds(5.0, 0, 40) is None


def test_schedule_is_in_optimizer_steps_with_warmup():
    total, warm = 100, warmup_steps(100, 0.1)
    assert warm == 10
    assert lr_multiplier(0, total, warm, "linear") == pytest.approx(0.1)
    assert lr_multiplier(9, total, warm, "linear") == pytest.approx(1.0)
    assert lr_multiplier(55, total, warm, "linear") == pytest.approx(0.5)
    assert lr_multiplier(100, total, warm, "linear") == pytest.approx(0.0)
    assert lr_multiplier(55, total, warm, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(80, total, warm, "constant") == 1.0
    assert optimizer_steps_per_epoch(9, 4) == 3


def test_exact_match_and_mathqa_letter():
    from kubetune_trainer.evaluation.scoring import score_predictions

    metrics, details = score_predictions(
        "mathqa",
        ["x = 5\nAnswer: c", "wrong\nAnswer: b", "garbage"],
        [{"completion": c} for c in ("x  = 5\nAnswer: c", "right\nAnswer: a", "y\nAnswer: d")],
    )
    assert metrics == {"exact_match": pytest.approx(1 / 3), "accuracy": pytest.approx(1 / 3)}
    assert details[0] == {"id": 0, "exact_match": True, "answer_correct": True}
    assert mathqa_letter("so the answer : ( e ) .") is None or mathqa_letter("answer: (e)") == "e"
    custom, _ = score_predictions("custom", ["a"], [{"completion": "a "}])
    assert custom == {"exact_match": 1.0}


def test_step_point_weighs_loss_by_tokens_and_rates_by_wall_time():
    from kubetune_trainer.metrics import StepWindow, step_point

    rank0, rank1 = StepWindow(), StepWindow()
    rank0.add_batch(loss_sum=30.0, useful=10, tokens=200, slots=256)
    rank1.add_batch(loss_sum=2.0, useful=2, tokens=100, slots=256)
    for window in (rank0, rank1):  # both see the same all-reduced gradient norm
        window.add_step(1e-3, 2.0)
        window.add_step(5e-4, 4.0)
    sums = [a + b for a, b in zip(rank0.sums(), rank1.sums(), strict=True)]
    point = step_point(sums, rank0.learning_rate, elapsed_s=2.0)
    assert point["train_loss"] == pytest.approx(32.0 / 12)  # not the mean of 3.0 and 1.0
    assert point["learning_rate"] == 5e-4 and point["grad_norm"] == pytest.approx(3.0)
    assert point["tokens_per_second"] == 150.0 and point["useful_tokens_per_second"] == 6.0
    assert point["packing_fill"] == pytest.approx(300 / 512)
    assert step_point(StepWindow().sums(), 0.0, 1.0)["grad_norm"] is None
