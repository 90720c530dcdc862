"""Packing fill and host memory of an epoch's batches, old pipeline vs new, in one run.

    python bench/bench_packing.py [--rows 2000] [--context 4096]

1. Fill: the share of the contextLength token slots that real tokens fill when the whole GSM8k
   train split (7,473 rows) is packed at context 512 with the builtin tokenizer trained on
   GSM8k text: in-order next-fit (the previous packer) vs best-fit decreasing (`pack_examples`).
2. Host memory for one epoch of `--rows` GSM8k rows at `--context`, batch 4 per device: the
   previous pipeline collated every batch of the epoch up front, each with its (batch, 1, L, L)
   boolean mask; the current one collates one batch at a time with position_ids only. Each is
   measured as the peak RSS growth of a fresh child process that builds and walks the epoch.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gsm8k" / "train.jsonl"


def examples(model_dir: Path, rows: int | None, context: int) -> list[Any]:
    from kubetune_trainer.data.presets import make_preset
    from kubetune_trainer.data.tokenization import Example, encode_pair
    from kubetune_trainer.model import add_special_tokens, load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    preset = make_preset("gsm8k")
    add_special_tokens(tokenizer, preset.special_tokens)
    out = []
    for number, line in enumerate(DATA.read_text().split("\n")[:rows], start=1):
        if line.strip():
            ids, labels = encode_pair(tokenizer, *preset(json.loads(line)))
            if len(ids) <= context:
                out.append(Example(number, tuple(ids), tuple(labels)))
    return out


def next_fit(items: list[Any], context: int) -> int:
    """Sequences the previous in-order packer needed."""
    count, used = 0, context + 1
    for example in items:
        if used + len(example.input_ids) > context:
            count, used = count + 1, 0
        used += len(example.input_ids)
    return count


def fill(model_dir: Path) -> dict[str, Any]:
    from kubetune_trainer.data.tokenization import pack_examples, shuffled

    train = shuffled(examples(model_dir, None, 512), 42, 1)
    tokens = sum(len(e.input_ids) for e in train)
    best_fit = len(pack_examples(train, 512))
    previous = next_fit(train, 512)
    return {
        "rows": len(train),
        "mean_example_tokens": round(tokens / len(train), 1),
        "next_fit": {"sequences": previous, "fill": round(tokens / (previous * 512), 4)},
        "best_fit_decreasing": {"sequences": best_fit, "fill": round(tokens / (best_fit * 512), 4)},
    }


def epoch_peak_rss(model_dir: Path, rows: int, context: int, previous: bool, out: Any) -> None:
    """In a child: peak RSS growth (MiB) while building and walking one epoch's batches."""
    import torch

    from kubetune_trainer.data.tokenization import collate_packed, worker_batches

    items = examples(model_dir, rows, context)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batches = worker_batches(
        items,
        epoch=1,
        seed=42,
        rank=0,
        world_size=1,
        batch_size=4,
        context_length=context,
        packing=True,
        pad_id=0,
    )
    walked: Any = batches
    if previous:  # every batch of the epoch built first, each with its boolean block mask
        walked = [collate_packed(chunk, 0, block_mask=True) for chunk in batches.chunks]
    tokens, largest = 0, 0
    for batch in walked:
        tokens += int(torch.count_nonzero(batch["input_ids"]))
        largest = max(largest, sum(t.nbytes for t in batch.values() if isinstance(t, torch.Tensor)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.put(
        {
            "batches": len(batches),
            "tokens": tokens,
            "largest_batch_mib": round(largest / 2**20, 2),
            "peak_rss_growth_mib": round((peak - start) / 1024, 1),
        }
    )


def memory(model_dir: Path, rows: int, context: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    result = {}
    for name, previous in (("previous", True), ("current", False)):
        queue = ctx.Queue()
        child = ctx.Process(target=epoch_peak_rss, args=(model_dir, rows, context, previous, queue))
        child.start()
        result[name] = queue.get()
        child.join()
    return {"rows": rows, "context": context, "batch_size": 4, **result}


def main() -> None:
    from kubetune_trainer.model import build_builtin_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--context", type=int, default=4096)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        texts = [
            json.loads(line)["question"] + "\n" + json.loads(line)["answer"]
            for line in DATA.read_text().splitlines()[:400]
        ]
        model_dir = build_builtin_model(texts, Path(tmp) / "tiny")
        print(
            json.dumps(
                {
                    "fill_gsm8k_512": fill(model_dir),
                    "epoch_host_memory": memory(model_dir, args.rows, args.context),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
