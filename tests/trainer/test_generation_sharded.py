"""Generation spread over Ray Data actors (one per worker) gives what one process gives."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.trainer


def test_generation_spread_over_two_actors_equals_one_process(tiny_model_dir, gsm8k_rows):
    """Ray Data actors take whole generation batches: the same greedy text, in the same order,
    as one Ray task generating everything (the one-worker path), and the same endings."""
    import ray

    from kubetune.api.tasks import QA_TOKENS
    from kubetune_trainer import runner
    from kubetune_trainer.data.presets import make_preset
    from kubetune_trainer.generation import (
        GenerationOptions,
        generate_for_model,
        generate_sharded,
    )

    runner.init_ray(True)
    preset = make_preset("gsm8k")
    prompts = [preset(row)[0] for row in gsm8k_rows[:7]]
    options = GenerationOptions("<END_A>", batch_size=2, max_new_tokens=6, special_tokens=QA_TOKENS)
    one = ray.get(
        ray.remote(generate_for_model)
        .options(num_cpus=1)
        .remote(str(tiny_model_dir), prompts, options)
    )
    counter = ray.remote(num_cpus=0)(runner.BatchCounter).remote()
    two = generate_sharded(
        str(tiny_model_dir), prompts, options, actors=2, gpus=False, counter=counter
    )
    assert len(one["predictions"]) == 7
    assert two["predictions"] == one["predictions"]
    assert two["endings"] == one["endings"] and two["endings"].total == 7
    assert ray.get(counter.last.remote())[:2] == (7, 7)  # every batch was counted once
    assert runner.generation_actors(workers=2, devices=1, batches=4) == 2
    assert runner.generation_actors(workers=8, devices=4, batches=10) == 2
    assert runner.generation_actors(workers=4, devices=1, batches=1) == 1
