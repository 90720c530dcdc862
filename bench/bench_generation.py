"""Rows generated per second with 1 and 2 copies of the model (Ray Data actors, what in-job
evaluation and `kubetune predict --workers N` use), on this machine's CPUs.

    python bench/bench_generation.py [--rows 64] [--batch-size 8] [--max-new-tokens 48]

The model is the builtin small Llama (random weights: every answer runs to maxNewTokens, so
each row costs the same) with its tokenizer trained on GSM8k; prompts are GSM8k questions.
Each actor is one Ray worker with one CPU (Ray sets one thread per CPU it grants). A timing
includes starting the actors and loading the model into each, as in a job (a first, untimed
run on one batch warms the imports and file caches). The texts of the two runs are compared:
spreading the work must not change a single token.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

from kubetune.api.models import SMALL_LLAMA
from kubetune.api.tasks import QA_TOKENS
from kubetune_trainer.data.presets import make_preset
from kubetune_trainer.generation import GenerationOptions, generate_sharded
from kubetune_trainer.model import build_builtin_model

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()

    import ray

    rows = [json.loads(line) for line in (DATASETS / "gsm8k" / "train.jsonl").open()][:400]
    model = build_builtin_model(
        [r["question"] + "\n" + r["answer"] for r in rows],
        Path(tempfile.mkdtemp()) / "model",
        name=SMALL_LLAMA,
    )
    preset = make_preset("gsm8k")
    prompts = [preset(row)[0] for row in rows[: args.rows]]
    options = GenerationOptions(
        "<END_A>",
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        special_tokens=QA_TOKENS,
    )
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False)
    texts = {}
    print(f"{len(prompts)} rows, batch {args.batch_size}, {args.max_new_tokens} new tokens each")
    # Starting the actors and loading the model: one batch of one row, one new token each.
    start_only = dataclasses.replace(options, batch_size=1, max_new_tokens=1)
    for actors in (1, 2):
        generate_sharded(str(model), prompts[: args.batch_size], options, actors=actors, gpus=False)
        start = time.perf_counter()
        generate_sharded(str(model), prompts[:actors], start_only, actors=actors, gpus=False)
        startup = time.perf_counter() - start
        start = time.perf_counter()
        result = generate_sharded(str(model), prompts, options, actors=actors, gpus=False)
        seconds = time.perf_counter() - start
        texts[actors] = result["predictions"]
        print(
            f"actors {actors}: {seconds:6.1f} s  {len(prompts) / seconds:6.2f} rows/s"
            f"  (start-up and loading {startup:4.1f} s; without it"
            f" {len(prompts) / max(seconds - startup, 1e-9):6.2f} rows/s)"
        )
    print("identical texts:", texts[1] == texts[2])


if __name__ == "__main__":
    main()
