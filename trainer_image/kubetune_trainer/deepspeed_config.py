"""DeepSpeed config from a TrainingSpec: every value explicit, nothing left as "auto".

Accelerate fills "auto" values only from objects it sees; with the optimizer and scheduler
declared here (DummyOptim/DummyScheduler on the Python side) `betas`/`eps` cannot be "auto", and
explicit numbers make the run reproducible from the config alone. There is no "scheduler"
section: DeepSpeed's warmup schedulers run the first two optimizer steps at learning rate 0 and
refuse zero warmup steps, so the loop hands DeepSpeed the same LambdaLR (`metrics.lr_multiplier`,
counted in optimizer steps) that the DDP path uses, and DeepSpeed steps it once per accumulation
boundary.
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


def build_deepspeed_config(training: Any, world_size: int) -> dict[str, Any]:
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
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
