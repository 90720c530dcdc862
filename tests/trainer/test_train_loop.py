"""The training loop's arithmetic on a real model, in one process: steps planned from the
packing each epoch trains on, and token-weighted gradient accumulation."""

from __future__ import annotations

import random

import pytest
import torch

from kubetune.api.report import TrainerReport
from kubetune.api.v1alpha1 import TrainingSpec
from kubetune_trainer.data.tokenization import (
    Example,
    collate_padded,
    encode_pair,
    model_inputs,
    token_loss_sum,
    worker_batches,
)
from kubetune_trainer.train_loop import StageConfig, stage_steps, train_micro_step, window_scale

pytestmark = pytest.mark.unit


def stage(examples: list[Example], **training) -> StageConfig:
    return StageConfig(
        stage="main",
        stage_index=0,
        training=TrainingSpec.model_validate(training),
        model_source={},
        tokenizer_files={},
        train=examples,
        validation=[],
        storage_uri="/unused",
        report=TrainerReport(),
    )


@pytest.mark.parametrize("packing", [True, False])
def test_planned_steps_are_the_steps_the_epochs_run(packing):
    """The LR schedule and the ETA divide by the planned total; it was counted from the
    unshuffled packing while each epoch trained on a shuffled one (a different count)."""
    lengths = [random.Random(i).choice([30, 90, 200, 260, 400]) for i in range(500)]
    examples = [Example(i, (1,) * n, (1,) * n) for i, n in enumerate(lengths, start=1)]
    config = stage(
        examples,
        epochs=3,
        batchSizePerDevice=3,
        gradientAccumulationSteps=2,
        contextLength=512,
        packing=packing,
    )
    t = config.training
    ran = 0
    for epoch in (1, 2, 3):  # what run_epoch does for every epoch
        batches = worker_batches(
            examples,
            epoch=epoch,
            seed=t.seed,
            rank=1,
            world_size=2,
            batch_size=t.batch_size_per_device,
            context_length=t.context_length,
            packing=packing,
            pad_id=0,
            accumulation=2,
        )
        ran += len(batches) // 2
    assert stage_steps(config, world_size=2) == ran


def _example(tokenizer, row: int, prompt: str, completion: str) -> Example:
    ids, labels = encode_pair(tokenizer, prompt, completion)
    return Example(row, tuple(ids), tuple(labels))


def test_accumulation_weighs_every_completion_token_of_the_window_equally(
    tiny_model_dir, tiny_tokenizer
):
    """Two micro-batches, one with 5x the completion tokens of the other: the accumulated
    gradient equals the gradient of the mean loss over all the window's tokens (a mean of
    the two micro-batch means would weigh the short one's tokens 5x)."""
    from accelerate import Accelerator

    from kubetune_trainer.model import load_model, resize_for_tokenizer

    short = _example(tiny_tokenizer, 1, "<START_Q>2+2?<END_Q><START_A>", "4<END_A>")
    long = _example(
        tiny_tokenizer,
        2,
        "<START_Q>Count to ten.<END_Q><START_A>",
        "one two three four five six seven eight nine ten, and then eleven.<END_A>",
    )
    assert long.completion_tokens > 4 * short.completion_tokens
    micro = [collate_padded([short], 0), collate_padded([long], 0)]

    def fresh_model():
        torch.manual_seed(0)
        model = load_model(str(tiny_model_dir), dtype=torch.float32)
        resize_for_tokenizer(model, tiny_tokenizer)
        return model

    reference = fresh_model()
    total, count = torch.zeros(()), 0
    for batch in micro:
        loss_sum, n = token_loss_sum(
            reference(**model_inputs(batch, reference)).logits, batch["labels"]
        )
        total, count = total + loss_sum, count + int(n)
    (total / count).backward()

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = accelerator.prepare(fresh_model())
    counts = [short.completion_tokens, long.completion_tokens]
    scale, stop = window_scale(accelerator, counts, 0, 2, world_size=1)
    assert not stop
    for batch in micro:
        with accelerator.accumulate(model):
            train_micro_step(accelerator, model, batch, scale)
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(ours.grad, theirs.grad, atol=1e-6, rtol=1e-4), name
