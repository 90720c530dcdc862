"""GPU-only checks, one short script (bench/gpu_check.sh runs it): torch and transformers only.

    python bench/gpu_check.py --out DIR [--size 1b|tiny] [--device cuda|cpu] [--steps N]

A Llama built from a config with random weights (~1.1B parameters: hidden 2048, 22 layers,
the TinyLlama shape; `tiny` is the builtin test model, for a CPU dry run), trained as the
trainer's DDP path does on one device (fp32 weights, bf16 autocast, AdamW, gradient
checkpointing, packed batches by position_ids). Each section writes DIR/<section>.json as soon
as it finishes, so a run cut short still leaves what it measured:

1. step: training tokens/s and model FLOPs utilisation (6 x parameters x tokens, + 2 x for the
   recompute, against the GPU's bf16 peak from kubetune's GPU table).
2. packed: the same step with the packed 4D block mask (eager attention) vs position_ids
   only (sdpa, transformers' packed path): tokens/s and peak memory of each.
3. memory: peak allocated memory of a step vs `kubetune plan`'s estimate for the same
   model, batch and context (DDP on one device, the plan's reserve left out).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, Any]] = {
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
    "tiny": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 2048,
        "tie_word_embeddings": False,
    },
}


def write(out: Path, section: str, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{section}.json").write_text(json.dumps(result, indent=2))
    print(section, json.dumps(result))


def packed_batch(batch: int, context: int, example: int, vocab: int, device: str) -> dict:
    """`batch` sequences of `context` tokens, each holding examples of `example` tokens."""
    import torch

    ids = torch.randint(4, vocab, (batch, context), device=device)
    positions = (torch.arange(context, device=device) % example).expand(batch, context)
    return {"input_ids": ids, "labels": ids.clone(), "position_ids": positions.contiguous()}


def block_mask(positions: Any) -> Any:
    """The (batch, 1, L, L) boolean block-diagonal causal mask of packed examples."""
    import torch

    starts = (positions == 0).cumsum(-1)
    same = starts[:, :, None] == starts[:, None, :]
    causal = torch.ones(
        positions.shape[-1], positions.shape[-1], dtype=torch.bool, device=positions.device
    ).tril()
    return (same & causal)[:, None]


def make_model(size: str, device: str, attn: str) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SIZES[size], attn_implementation=attn)).to(device)
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    return model


def timed_steps(model: Any, batch: dict, steps: int, device: str, mask: bool) -> dict[str, float]:
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    inputs = dict(batch)
    if mask:
        inputs["attention_mask"] = block_mask(batch["position_ids"])
        del inputs["position_ids"]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    elapsed = 0.0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(steps + 1):  # the first step warms up and is not timed
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            loss = model(**inputs, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed += (time.perf_counter() - start) if step else 0.0
    tokens = batch["input_ids"].numel() * steps
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    return {
        "tokens_per_s": tokens / elapsed,
        "seconds_per_step": elapsed / steps,
        "peak_gib": peak / 2**30,
    }


def plan_estimate(size: str, batch: int, context: int) -> float:
    """GiB the planner expects on one device for this step (DDP, fp32 weights, bf16 compute)."""
    from kubetune.api.v1alpha1 import FineTuneJobSpec
    from kubetune.planning.memory import RESERVE, Layout, training_needs
    from kubetune.planning.shapes import ModelShape

    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"name": "gpu-check"},
            "task": {"preset": "gsm8k"},
            "data": {"train": {"uri": "s3://b/t.jsonl"}},
            "evaluation": {"enabled": False},
            "training": {
                "batchSizePerDevice": batch,
                "contextLength": context,
                "deepspeed": {"enabled": False, "offloadOptimizer": False},
            },
            "output": {"storageURI": "s3://b/out"},
        }
    )
    needs = training_needs(spec, ModelShape.from_config(SIZES[size]), Layout(1, 1))
    return (needs.device.total - needs.device.items.get(RESERVE, 0)) / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--example", type=int, default=256, help="tokens per packed example")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    import torch

    from kubetune.api.instance_types import GPUS
    from kubetune.planning.shapes import ModelShape

    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    parameters = ModelShape.from_config(SIZES[args.size]).parameters
    batch = packed_batch(
        args.batch, args.context, args.example, SIZES[args.size]["vocab_size"], args.device
    )

    model = make_model(args.size, args.device, "sdpa")
    step = timed_steps(model, batch, args.steps, args.device, mask=False)
    gpu = next((g for name, g in GPUS.items() if name.split("-")[0] in device_name), None)
    mfu = (8 * parameters * step["tokens_per_s"] / (gpu.bf16_tflops * 1e12)) if gpu else None
    write(args.out, "step", {"device": device_name, "parameters": parameters, **step, "mfu": mfu})
    del model
    if args.device == "cuda":
        torch.cuda.empty_cache()

    eager = timed_steps(
        make_model(args.size, args.device, "eager"), batch, args.steps, args.device, mask=True
    )
    write(args.out, "packed", {"position_ids_sdpa": step, "block_mask_eager": eager})

    estimate = plan_estimate(args.size, args.batch, args.context)
    write(
        args.out, "memory", {"measured_peak_gib": step["peak_gib"], "plan_estimate_gib": estimate}
    )


if __name__ == "__main__":
    main()
