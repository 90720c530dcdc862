"""Examples scored per second, per task, through `score_predictions` (what `kubetune eval`
runs), on the shared datasets.

    python bench/bench_eval.py [--sql-rows 4000] [--workers 1 2]

SQL is timed from scratch (the per-example table synthesis is included: its cache is cleared
before each run) with two kinds of predictions: the gold query itself (a fine-tuned model's
usual output; recognised without running it) and a near miss of it (off-by-one literal, `>=`
for `>`, dropped condition, other aggregate or order: always executed). Run it on an idle
machine; the load average is printed so that numbers from a busy one can be discounted, and
CPU seconds (of this process and its workers) are printed beside wall seconds: examples per
CPU second times the number of idle cores is what a quiet machine gives. Last, the wall time
of the command a user runs, `kubetune eval --task sql` on the SQL rows with gold predictions
(process start, file reading and the worker processes included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlglot import exp

from kubetune.api.tasks import TASKS
from kubetune_trainer.evaluation import sql
from kubetune_trainer.evaluation.scoring import score_predictions

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
FLIPPED: dict[type[exp.Expr], type[exp.Expr]] = {
    exp.GT: exp.GTE,
    exp.GTE: exp.GT,
    exp.LT: exp.LTE,
    exp.LTE: exp.LT,
}
SWAPPED: dict[type[exp.Expr], type[exp.Expr]] = {
    exp.Max: exp.Min,
    exp.Min: exp.Max,
    exp.Avg: exp.Sum,
    exp.Sum: exp.Avg,
}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def near_miss(gold: str) -> str:
    """A wrong but well-formed variant of a gold query, so that the prediction is executed."""
    query = sql.parse_query(sql.extract_query(gold))
    for node in query.walk():
        if type(node) in FLIPPED:
            node.replace(
                FLIPPED[type(node)](this=node.this.copy(), expression=node.expression.copy())
            )
            return query.sql(dialect="sqlite")
        if type(node) in SWAPPED:
            node.replace(SWAPPED[type(node)](this=node.this.copy()))
            return query.sql(dialect="sqlite")
    order = query.args.get("order")
    if order is not None:
        order.expressions[0].set("desc", not order.expressions[0].args.get("desc"))
    elif isinstance(query, exp.Select):
        query.set("limit", exp.Limit(expression=exp.Literal.number(1)))
    return query.sql(dialect="sqlite")


def viggo_inputs() -> tuple[list[str], list[dict[str, Any]]]:
    rows = read_jsonl(DATASETS / "viggo" / "viggo-test.jsonl")
    predictions = [row["meaning_representation"] for row in rows]
    for index in range(0, len(predictions), 3):  # every third one wrong in some way
        predictions[index] = predictions[index].replace("], ", "],", 1).replace("[", "[x", 1)
    return predictions, rows


def gsm8k_inputs() -> tuple[list[str], list[dict[str, Any]]]:
    rows = read_jsonl(DATASETS / "gsm8k" / "test.jsonl")
    predictions = [row["answer"] for row in rows]
    for index in range(0, len(predictions), 3):  # every third one without '####'
        predictions[index] = predictions[index].replace("####", "so the answer is")
    return predictions, rows


def sql_rows(count: int) -> list[dict[str, Any]]:
    folder = DATASETS / "sql-create-context"
    return (read_jsonl(folder / "train.jsonl") + read_jsonl(folder / "heldout.jsonl"))[:count]


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the scoring workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(
    task: str, predictions: list[str], references: list[dict[str, Any]], workers: int
) -> tuple[float, float, dict[str, float]]:
    """Wall seconds, CPU seconds (all processes) and metrics of one scoring run."""
    sql.build_gold_case.cache_clear()
    start, start_cpu = time.perf_counter(), _cpu_seconds()
    metrics, _ = score_predictions(task, predictions, references, workers=workers)
    return time.perf_counter() - start, _cpu_seconds() - start_cpu, metrics


def cli_seconds(rows: list[dict[str, Any]]) -> tuple[float, str]:
    """Wall seconds of `kubetune eval --task sql` on `rows` with gold predictions, and its
    summary line."""
    with tempfile.TemporaryDirectory() as folder:
        references, predictions = Path(folder) / "refs.jsonl", Path(folder) / "preds.jsonl"
        references.write_text(
            "".join(json.dumps({"id": i, **r}) + "\n" for i, r in enumerate(rows))
        )
        predictions.write_text(
            "".join(
                json.dumps({"id": i, "prediction": r["answer"]}) + "\n" for i, r in enumerate(rows)
            )
        )
        command = [sys.executable, "-m", "kubetune.cli", "eval", "--task", "sql"]
        command += ["--predictions", str(predictions), "--references", str(references)]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return time.perf_counter() - start, done.stdout.splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sql-rows", type=int, default=4000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    rows = sql_rows(args.sql_rows)
    cases: list[tuple[str, str, Callable[[], tuple[list[str], list[dict[str, Any]]]]]] = [
        ("viggo", "viggo (test split)", viggo_inputs),
        ("gsm8k", "gsm8k (test split)", gsm8k_inputs),
        ("sql", "sql, predictions = gold", lambda: ([r["answer"] for r in rows], rows)),
        (
            "sql",
            "sql, predictions = near misses",
            lambda: ([near_miss(r["answer"]) for r in rows], rows),
        ),
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"cpus: {os.cpu_count()}, load average (1 min) at start: {load:.2f}")
    print(
        f"{'task':32} {'examples':>8} {'workers':>7} {'wall s':>7} {'per s':>8}"
        f" {'cpu s':>7} {'per cpu s':>9}  headline"
    )
    for task, label, inputs in cases:
        predictions, references = inputs()
        for workers in args.workers:
            seconds, cpu, metrics = timed(task, predictions, references, workers)
            count = len(predictions)
            print(
                f"{label:32} {count:>8} {workers:>7} {seconds:>7.2f} {count / seconds:>8.1f}"
                f" {cpu:>7.2f} {count / cpu:>9.1f}  {TASKS[task].headline}={metrics[TASKS[task].headline]:.3f}"
            )
    seconds, counts = cli_seconds(rows)
    print(f"kubetune eval --task sql, {len(rows)} rows, gold predictions: {seconds:.2f} s wall")
    print(f"  {counts}")


if __name__ == "__main__":
    main()
