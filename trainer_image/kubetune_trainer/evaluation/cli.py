"""`kubetune eval`: score a predictions file against a references file.

    kubetune eval --task TASK --predictions P.jsonl --references R.jsonl
                  [--output M.json] [--details D.jsonl] [--strict] [--workers N]
                  [--scorer '{"kind": "regex", "pattern": "..."}']

Exit status: 0 when scored, 1 when an input file is unusable (the message names the file and
line), 2 for bad arguments (argparse). Only argparse is imported at module level: the top-level
CLI builds every subcommand's parser on each invocation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kubetune.api.tasks import TASKS

_NOTES = {
    "execution_accuracy": "over scorable rows",
    "scorable": "fraction of all rows",
    "precedence_violation_rate": "over parseable predictions",
}


def add_eval(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score model outputs against references (any task of the registry)",
        description="Score a JSONL file of predictions against the task's reference rows.",
    )
    parser.add_argument("--task", required=True, choices=list(TASKS))
    parser.add_argument(
        "--predictions", required=True, type=Path, help='JSONL rows {"id": ..., "prediction": ...}'
    )
    parser.add_argument(
        "--references",
        required=True,
        type=Path,
        help="JSONL rows with the task's reference fields ("
        + "; ".join(f"{t.name}: {', '.join(t.reference_fields)}" for t in TASKS.values())
        + ") and an optional id",
    )
    parser.add_argument("--output", type=Path, help="write the metrics here (JSON)")
    parser.add_argument("--details", type=Path, help="write one JSONL row per example here")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="gsm8k: an output without '####' is wrong (default: its last number is used)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes used to score (default: one per CPU, at most 8; results do not depend"
        " on it)",
    )
    parser.add_argument(
        "--scorer",
        help='chat and custom: a spec.task.scorer as JSON, e.g. \'{"kind": "numeric"}\''
        " (default exact_match)",
    )
    parser.set_defaults(handler=run_eval)


def _summary(
    task: str, samples: int, metrics: dict[str, float], counts: dict[str, int], headline: str
) -> str:
    lines = [f"kubetune eval: {task}, {samples} examples"]
    width = max(len(name) for name in metrics)
    for name, value in metrics.items():
        marker = "*" if name == headline else " "
        note = f"  ({_NOTES[name]})" if name in _NOTES else ""
        lines.append(f" {marker}{name:<{width}}  {value:.4f}{note}")
    if counts:
        lines.append("  " + ", ".join(f"{name}: {count}" for name, count in counts.items()))
    return "\n".join(lines)


def _counts(task: str, details: list[dict[str, Any]]) -> dict[str, int]:
    from kubetune_trainer.tasks import task as task_of

    return task_of(task).counts(details)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _scorer(task: str, text: str | None) -> dict[str, Any] | None:
    """The --scorer JSON checked as the spec checks it (ValueError naming the problem)."""
    if text is None:
        return None
    from pydantic import ValidationError

    from kubetune.api.tasks import scoring_tasks
    from kubetune.api.v1alpha1 import ScorerSpec

    if task not in scoring_tasks():
        raise ValueError(f"--scorer is only used with --task {' or '.join(scoring_tasks())}")
    try:
        return ScorerSpec.model_validate(json.loads(text)).to_wire()
    except (ValueError, ValidationError) as error:
        raise ValueError(f"--scorer: {error}") from None


def run_eval(args: argparse.Namespace) -> int:
    from kubetune_trainer.evaluation.scoring import InputError, default_workers, score_files
    from kubetune_trainer.tasks.scorers import ScorerError, headline

    workers = args.workers if args.workers is not None else default_workers()
    try:
        scorer = _scorer(args.task, args.scorer)
        metrics, details = score_files(
            args.task,
            args.predictions,
            args.references,
            strict=args.strict,
            workers=workers,
            scorer=scorer,
        )
    except (InputError, ScorerError, ValueError) as error:
        print(f"kubetune eval: error: {error}", file=sys.stderr)
        return 1
    counts = _counts(args.task, details)
    report = {
        "task": args.task,
        "samples": len(details),
        "strict": args.strict,
        "metrics": metrics,
        "counts": counts,
    }
    if args.output:
        _write(args.output, json.dumps(report, indent=2) + "\n")
    if args.details:
        _write(args.details, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in details))
    print(_summary(args.task, len(details), metrics, counts, headline(args.task, scorer, metrics)))
    return 0
