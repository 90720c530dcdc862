"""Useful tokens per second: kubetune's training pipeline vs the case study's.

    python bench/bench_trainer_throughput.py [--rows 256] [--batch 8] [--context 512]

Useful tokens are completion tokens that carry loss and are not padding (what fine-tuning is
for). Both pipelines train the same tiny random Llama (builtin:tiny-llama, tokenizer trained on
GSM8k) on the same real GSM8k rows (real length distribution), single process on this CPU,
forward + backward + AdamW step, for one pass over the rows:

- case study: every example padded to 512, loss on every position (prompt and padding too),
  no packing;
- kubetune: examples packed best-fit-decreasing into 512-token sequences, each example's
  positions restarting at 0 (position_ids: transformers' packed-sequence path, no attention
  across examples), loss only on completion tokens, padding only up to the longest row.

Both pipelines train on the same number of useful tokens; the ratio of useful tokens per
second is the speed-up. Its ideal for this tokenizer is context / mean example length (the
case study computes `context` positions per example, packing about the example's own length);
the run prints both and the share of the ideal reached. The load average is printed: numbers
from a busy machine understate both, and their ratio less so.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from kubetune_trainer.data.presets import make_preset
from kubetune_trainer.data.tokenization import (
    IGNORE_INDEX,
    Example,
    collate_packed,
    collate_padded,
    encode_pair,
    model_inputs,
    pack_examples,
    token_loss_sum,
)
from kubetune_trainer.model import (
    add_special_tokens,
    build_builtin_model,
    load_model,
    load_tokenizer,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gsm8k" / "train.jsonl"


def load_examples(tokenizer: Any, rows: int, context: int, loss_on_prompt: bool) -> list[Example]:
    preset = make_preset("gsm8k")
    examples = []
    with DATA.open() as handle:
        for number, line in enumerate(handle, start=1):
            ids, labels = encode_pair(tokenizer, *preset(json.loads(line)), loss_on_prompt)
            if len(ids) <= context:
                examples.append(Example(number, tuple(ids), tuple(labels)))
            if len(examples) == rows:
                break
    return examples


def case_study_batches(
    examples: list[Example], batch: int, context: int, pad_id: int
) -> list[dict]:
    """Pad to `context`, labels = input ids everywhere (padding included), no packing."""
    out = []
    for start in range(0, len(examples), batch):
        collated = collate_padded(examples[start : start + batch], pad_id, pad_to=context)
        collated["labels"] = collated["input_ids"].clone()
        out.append(collated)
    return out


def kubetune_batches(examples: list[Example], batch: int, context: int, pad_id: int) -> list[dict]:
    packed = pack_examples(examples, context)
    return [collate_packed(packed[i : i + batch], pad_id) for i in range(0, len(packed), batch)]


def useful_tokens(examples: list[Example]) -> int:
    return sum(sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in examples)


def train_pass(model_dir: Path, tokenizer: Any, batches: list[dict]) -> float:
    torch.manual_seed(0)
    model = load_model(str(model_dir), dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    start = time.perf_counter()
    for batch in batches:
        logits = model(**model_inputs(batch, model)).logits
        loss_sum, count = token_loss_sum(logits, batch["labels"])
        (loss_sum / count.clamp(min=1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        texts = [
            json.loads(line)["question"] + json.loads(line)["answer"]
            for line in DATA.read_text().splitlines()[:2000]
        ]
        model_dir = build_builtin_model(texts, Path(tmp) / "tiny")
        tokenizer = load_tokenizer(str(model_dir))
        add_special_tokens(tokenizer, make_preset("gsm8k").special_tokens)
        examples = load_examples(tokenizer, args.rows, args.context, loss_on_prompt=False)
        useful = useful_tokens(examples)
        lengths = sorted(len(e.input_ids) for e in examples)
        pad = tokenizer.pad_token_id
        runs = {
            "case_study": case_study_batches(examples, args.batch, args.context, pad),
            "kubetune": kubetune_batches(examples, args.batch, args.context, pad),
        }
        train_pass(model_dir, tokenizer, runs["kubetune"][:2])  # warm-up (allocator, kernels)
        result: dict[str, Any] = {
            "rows": len(examples),
            "useful_completion_tokens": useful,
            "median_example_tokens": lengths[len(lengths) // 2],
            "mean_example_tokens": round(sum(lengths) / len(lengths), 1),
            "context": args.context,
            "load_average_1m": os.getloadavg()[0],
        }
        for name, batches in runs.items():
            seconds = train_pass(model_dir, tokenizer, batches)
            result[name] = {
                "sequences": sum(b["input_ids"].shape[0] for b in batches),
                "tokens_computed": sum(b["input_ids"].numel() for b in batches),
                "seconds": round(seconds, 2),
                "useful_tokens_per_s": round(useful / seconds, 1),
            }
        speedup = (
            result["kubetune"]["useful_tokens_per_s"] / result["case_study"]["useful_tokens_per_s"]
        )
        ideal = args.context / (sum(lengths) / len(lengths))
        result["speedup"] = round(speedup, 2)
        result["ideal_speedup"] = round(ideal, 2)
        result["share_of_ideal"] = round(speedup / ideal, 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
