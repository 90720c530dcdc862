"""`kubetune predict`: batched greedy generation from a checkpoint, in the format
`kubetune eval --predictions` reads.

    kubetune predict --checkpoint DIR --task T --data test.jsonl --output P.jsonl
                     [--few-shot --train train.jsonl] [--max-samples N] [--workers N]

Prompts are built by the task's preset exactly as in training, and generation stops at the
preset's stop token. With --few-shot (the baseline for an untuned base model, which has never
seen the special-token layout), worked examples from the training split come first.

One prediction per data row, in file order, so `kubetune eval` can match by line; a row that
cannot be read or formatted is an error naming the file and row, never silently skipped.
Generation runs in this process (GPU when there is one), or with --workers N > 1 in N copies
of the model on a local Ray (Ray Data actors, one GPU each when there are GPUs), which hand
out whole batches: the same text in the same order as one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from kubetune.api.tasks import TASKS


def add_predict(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="generate predictions for a task's data from a checkpoint",
        description="Greedy generation that stops at the task's stop token; output for kubetune eval.",
    )
    parser.add_argument("--checkpoint", required=True, help="HF checkpoint folder (or hub id).")
    parser.add_argument(
        "--task",
        required=True,
        choices=list(TASKS),
        help="Task preset that formats the prompts.",
    )
    parser.add_argument(
        "--data", required=True, help="Rows to predict (JSONL, JSON, CSV, Parquet)."
    )
    parser.add_argument("--output", required=True, help="Predictions JSONL to write.")
    parser.add_argument(
        "--few-shot", action="store_true", help="Prefix worked examples (baseline)."
    )
    parser.add_argument("--train", default=None, help="Training rows for --few-shot examples.")
    parser.add_argument("--shots", type=int, default=3, help="Worked examples with --few-shot.")
    parser.add_argument(
        "--max-samples", type=int, default=None, help="Predict the first N rows only."
    )
    parser.add_argument("--batch-size", type=int, default=16, help="Generation batch size.")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="Generation length limit.")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Copies of the model generating side by side (Ray Data actors; 1: this process).",
    )
    parser.set_defaults(handler=run_predict)


class InputError(ValueError):
    """Bad input: the message names the file and row."""


def test_rows(path: str, preset: Any, max_samples: int | None) -> list[Any]:
    from kubetune_trainer.data.loaders import load_rows
    from kubetune_trainer.data.prepare import DropLog, test_rows

    loaded = load_rows(path)
    if loaded.problems:
        number, reason = loaded.problems[0]
        raise InputError(f"{path}: row {number}: {reason}")
    drops = DropLog()
    rows = test_rows(loaded.rows[:max_samples], preset, drops)
    for reason, numbers in drops.by_reason.items():
        raise InputError(f"{path}: row {numbers[0]}: {reason}")
    return rows


def row_id(row: Any) -> Any:
    """The row's own `id` when it has one, else its row number in the file."""
    return row.fields.get("id", row.row)


def task_preset(task: str, checkpoint: str) -> Any:
    """The task's preset; a chat one renders with the checkpoint's chat template."""
    from kubetune_trainer.data.presets import make_preset
    from kubetune_trainer.model import load_tokenizer
    from kubetune_trainer.runner import bound

    preset = make_preset(task)
    if preset.layout != "chat":
        return preset
    return bound(preset, load_tokenizer(checkpoint), checkpoint)


def run_predict(args: argparse.Namespace) -> int:
    if args.few_shot and not args.train:
        print(
            "--few-shot needs --train (worked examples come from the training split)",
            file=sys.stderr,
        )
        return 2
    if args.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    try:
        preset = task_preset(args.task, args.checkpoint)
        rows = test_rows(args.data, preset, args.max_samples)
        shots = test_rows(args.train, preset, args.shots) if args.few_shot else []
    except (InputError, OSError, ValueError) as error:
        print(error, file=sys.stderr)
        return 2
    predictions = generate_predictions(args, preset, rows, shots)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w") as handle:
        for row, prediction in zip(rows, predictions, strict=True):
            handle.write(json.dumps({"id": row_id(row), "prediction": prediction}) + "\n")
    print(f"wrote {len(rows)} predictions to {output}")
    return 0


def generate_predictions(
    args: argparse.Namespace, preset: Any, rows: list[Any], shots: list[Any]
) -> list[str]:
    from kubetune_trainer.generation import GenerationOptions

    options = GenerationOptions(
        preset.stop_token,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        special_tokens=preset.special_tokens,
    )
    prompts = [r.prompt for r in rows]
    if shots:  # as the in-run baseline
        prompts = preset.baseline_prompts([r.fields for r in rows], [s.fields for s in shots])
        options = dataclasses.replace(options, stop_text=preset.baseline_stop_text)
    return list(generated(args.checkpoint, prompts, options, args.workers)["predictions"])


def generated(checkpoint: str, prompts: list[str], options: Any, workers: int) -> dict[str, Any]:
    """`generate_for_model` in this process, or `generate_sharded` over `workers` actors."""
    from kubetune_trainer.generation import generate_for_model, generate_sharded

    if workers == 1:
        return generate_for_model(checkpoint, prompts, options)
    import ray
    import torch

    gpus = torch.cuda.device_count()
    if not ray.is_initialized():
        # Ray Data schedules its own tasks beside the actors: leave it spare logical CPUs.
        ray.init(num_cpus=workers + 2, num_gpus=gpus, include_dashboard=False)
    return generate_sharded(checkpoint, prompts, options, actors=workers, gpus=gpus > 0)
