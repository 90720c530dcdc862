"""DeepSpeed config from a TrainingSpec: every value explicit, nothing left as "auto".

Accelerate fills "auto" values only from objects it sees; with the optimizer and scheduler
declared here (DummyOptim/DummyScheduler on the Python side) `betas`/`eps` cannot be "auto", and
explicit numbers make the run reproducible from the config alone. The scheduler is counted in
optimizer steps (DeepSpeed steps it once per accumulation boundary), fixing the case study's
schedule counted in samples.
"""

from __future__ import annotations

from typing import Any

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def _zero_section(stage: int, offload_optimizer: bool, offload_parameters: bool) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        # Rank 0 gets a consolidated 16-bit state dict for the per-epoch HF checkpoint.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return zero


def _scheduler_section(
    kind: str, learning_rate: float, total_steps: int, warmup: int
) -> dict[str, Any]:
    if kind == "constant":
        return {
            "type": "WarmupLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": learning_rate,
                "warmup_num_steps": warmup,
                "warmup_type": "linear",
            },
        }
    if kind == "cosine":
        return {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": total_steps,
                "warmup_num_steps": warmup,
                "warmup_min_ratio": 0.0,
                "cos_min_ratio": 0.0,
                "warmup_type": "linear",
            },
        }
    return {
        "type": "WarmupDecayLR",
        "params": {
            "total_num_steps": total_steps,
            "warmup_min_lr": 0.0,
            "warmup_max_lr": learning_rate,
            "warmup_num_steps": warmup,
            "warmup_type": "linear",
        },
    }


def build_deepspeed_config(
    training: Any, world_size: int, total_steps: int, warmup: int
) -> dict[str, Any]:
    """The DeepSpeed config dict for `training` (a TrainingSpec, duck-typed)."""
    ds = training.deepspeed
    return {
        "train_micro_batch_size_per_gpu": training.batch_size_per_device,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "train_batch_size": (
            training.batch_size_per_device * training.gradient_accumulation_steps * world_size
        ),
        "gradient_clipping": training.max_grad_norm,
        "bf16": {"enabled": training.precision == "bf16"},
        "fp16": {"enabled": training.precision == "fp16"},
        "zero_optimization": _zero_section(ds.stage, ds.offload_optimizer, ds.offload_parameters),
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": training.learning_rate,
                "betas": list(ADAM_BETAS),
                "eps": ADAM_EPS,
                "weight_decay": training.weight_decay,
            },
        },
        "scheduler": _scheduler_section(
            training.scheduler, training.learning_rate, max(total_steps, 1), warmup
        ),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
