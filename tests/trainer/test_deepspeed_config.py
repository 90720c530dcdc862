"""DeepSpeed config from the TrainingSpec: explicit values, stage/offload/precision mapped."""

from __future__ import annotations

import json

import pytest

from kubetune.api.v1alpha1 import TrainingSpec
from kubetune_trainer.deepspeed_config import build_deepspeed_config

pytestmark = pytest.mark.unit


def test_case_study_defaults_zero3_offload_bf16():
    config = build_deepspeed_config(TrainingSpec(), world_size=16)
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in zero and zero["stage3_gather_16bit_weights_on_model_save"]
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert config["train_batch_size"] == 16 * 16
    assert config["gradient_clipping"] == 1.0
    # The schedule is the loop's LambdaLR (DeepSpeed's own would start at learning rate 0).
    assert "scheduler" not in config


def test_nothing_is_left_auto():
    config = build_deepspeed_config(TrainingSpec(), world_size=2)
    assert '"auto"' not in json.dumps(config)
    assert config["optimizer"]["params"]["betas"] == [0.9, 0.999]
    assert config["optimizer"]["params"]["eps"] == 1e-8


def test_stage_offload_precision_accumulation_follow_the_spec():
    spec = TrainingSpec(
        precision="fp32",
        gradient_accumulation_steps=4,
        batch_size_per_device=2,
        max_grad_norm=0.5,
        scheduler="cosine",
        deepspeed={"stage": 2, "offload_optimizer": False},
    )
    config = build_deepspeed_config(spec, world_size=3)
    assert config["zero_optimization"]["stage"] == 2
    assert "offload_optimizer" not in config["zero_optimization"]
    assert not config["bf16"]["enabled"] and config["gradient_accumulation_steps"] == 4
    assert config["train_batch_size"] == 2 * 4 * 3 and config["gradient_clipping"] == 0.5


def test_parameter_offload_on_stage3():
    spec = TrainingSpec(deepspeed={"stage": 3, "offload_parameters": True})
    zero = build_deepspeed_config(spec, 1)["zero_optimization"]
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
