"""`kubetune run -f job.yaml [--output DIR]`: the same FineTuneJob on a local Ray.

Writes DIR/status.json (the FineTuneJobStatus the operator would write), DIR/report.json,
DIR/metrics.jsonl, DIR/learning_curve.png, predictions, and the checkpoints under
spec.output.storageURI (relative paths are relative to the manifest's folder). Shows a progress
bar fed by the report the training workers write, and a summary table at the end.
Only light imports at module level: `kubetune --help` must stay fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kubetune.api.report import TrainerReport
from kubetune.api.v1alpha1 import FineTuneJob, FineTuneJobStatus
from kubetune.status_mapping import local_rayjob_status, map_rayjob_status

LOCAL_REPORT_INTERVAL_S = 1.0


def add_run(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a FineTuneJob on this machine (local Ray, CPUs or GPUs)",
        description="Run the whole FineTuneJob here: training, best checkpoint, evaluation.",
    )
    parser.add_argument("-f", "--file", required=True, help="FineTuneJob manifest (YAML).")
    parser.add_argument(
        "--output", default=None, help="Output folder (default ./kubetune-output/<job name>)."
    )
    parser.set_defaults(handler=handle_run)


# --------------------------------------------------------------------------- status


def now() -> str:
    from kubetune_trainer.reporting import now_rfc3339

    return now_rfc3339()


def local_status(
    job: FineTuneJob, report: TrainerReport, previous: FineTuneJobStatus | None
) -> FineTuneJobStatus:
    """What the operator would put into .status for this report: the operator's own mapper,
    fed what KubeRay would say about this run (there is no RayJob, so no rayJob field)."""
    status = map_rayjob_status(job, local_rayjob_status(report), report, previous, now())
    return status.model_copy(update={"ray_job": None})


def write_json(path: Path, document: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True))
    tmp.replace(path)


def write_metrics(path: Path, report: TrainerReport) -> None:
    lines = [json.dumps({"type": "epoch", **e.to_wire()}) for e in report.epochs]
    if report.evaluation is not None:
        lines.append(json.dumps({"type": "evaluation", **report.evaluation.to_wire()}))
    path.write_text("".join(line + "\n" for line in lines))


def plot_learning_curve(report: TrainerReport, path: Path) -> None:
    """Train loss and validation perplexity per epoch (stages one after the other)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not report.epochs:
        return
    xs = list(range(1, len(report.epochs) + 1))
    labels = [f"{e.stage}:{e.epoch}" for e in report.epochs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(xs, [e.train_loss for e in report.epochs], marker="o", label="train loss")
    left.plot(xs, [e.validation_loss for e in report.epochs], marker="o", label="validation loss")
    left.set_title("loss (completion tokens)")
    left.legend()
    right.plot(xs, [e.validation_perplexity for e in report.epochs], marker="o", color="C2")
    right.set_title("validation perplexity")
    for axis in (left, right):
        axis.set_xticks(xs, labels, rotation=30)
        axis.set_xlabel("stage:epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class Outputs:
    """Keeps DIR/status.json, report.json and metrics.jsonl current as reports arrive."""

    def __init__(self, output: Path, job: FineTuneJob):
        self.output = output
        self.job = job
        self.status: FineTuneJobStatus | None = None

    def __call__(self, report: TrainerReport) -> None:
        self.status = local_status(self.job, report, self.status)
        write_json(self.output / "status.json", self.status.to_wire())
        write_metrics(self.output / "metrics.jsonl", report)
        if report.phase in ("Succeeded", "Failed"):
            plot_learning_curve(report, self.output / "learning_curve.png")


# --------------------------------------------------------------------------- display


class ProgressBar(threading.Thread):
    """Polls report.json (written by the rank-0 worker) and drives a tqdm bar."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()

    def run(self) -> None:
        from tqdm import tqdm

        bar = None
        key = None
        while not self.stop.wait(0.5):
            report = self._read()
            if report is None or report.phase != "Training" or not report.total_steps:
                continue
            if key != report.stage:
                if bar is not None:
                    bar.close()
                key = report.stage
                bar = tqdm(
                    total=report.total_steps,
                    desc=f"stage {report.stage}",
                    unit="step",
                    file=sys.stderr,
                )
            assert bar is not None
            bar.n = min(report.step, report.total_steps)
            last = report.epochs[-1] if report.epochs else None
            bar.set_postfix(
                epoch=f"{report.epoch}/{report.total_epochs}",
                val_ppl=f"{last.validation_perplexity:.1f}" if last else "-",
            )
        if bar is not None:
            bar.close()

    def _read(self) -> TrainerReport | None:
        try:
            return TrainerReport.model_validate_json(self.path.read_text())
        except (OSError, ValueError):
            return None


def summary_table(report: TrainerReport, elapsed_s: float) -> str:
    rows = [f"{'stage':<12} {'epoch':>5} {'train loss':>11} {'val loss':>9} {'val ppl':>10}  ckpt"]
    best = report.best_checkpoint
    for e in report.epochs:
        mark = "*" if best and (e.stage, e.epoch) == (best.stage, best.epoch) else ""
        rows.append(
            f"{e.stage:<12} {e.epoch:>5} {e.train_loss:>11.4f} {e.validation_loss:>9.4f} "
            f"{e.validation_perplexity:>10.2f}  {mark}"
        )
    if best:
        rows.append(f"best checkpoint: {best.uri} (stage {best.stage}, epoch {best.epoch})")
    for split in report.data:
        dropped = ", ".join(f"{d.count} {d.reason}" for d in split.dropped) or "none dropped"
        rows.append(
            f"data {split.split}: {split.rows_used}/{split.rows_read} rows used ({dropped})"
        )
    if report.evaluation:
        ev = report.evaluation
        rows.append(
            f"evaluation {ev.task} on {ev.samples} rows: {ev.primary_metric} = {ev.score:.3f}"
            + (f" (baseline {ev.baseline.get(ev.primary_metric, 0.0):.3f})" if ev.baseline else "")
        )
    rows.append(f"phase {report.phase} in {elapsed_s:.0f}s")
    return "\n".join(rows)


# --------------------------------------------------------------------------- command


def load_manifest(path: Path) -> Any:
    import yaml

    from kubetune.validation import parse_finetunejob

    return parse_finetunejob(yaml.safe_load(path.read_text()))


def handle_run(args: argparse.Namespace) -> int:
    from kubetune.validation import SpecError
    from kubetune_trainer.reporting import FileReporter, ThrottledReporter
    from kubetune_trainer.runner import RunOptions, run_job

    manifest = Path(args.file).resolve()
    try:
        job = load_manifest(manifest)
    except SpecError as exc:
        print(f"{args.file}: invalid FineTuneJob:", *exc.problems, sep="\n  ", file=sys.stderr)
        return 2
    output = Path(args.output or Path("kubetune-output") / job.metadata.name).resolve()
    output.mkdir(parents=True, exist_ok=True)
    report_path = output / "report.json"
    options = RunOptions(
        job_name=job.metadata.name,
        reporter=ThrottledReporter(FileReporter(report_path), 0.0),
        workdir=output / "work",
        report_target=f"file:{report_path}",
        base_dir=manifest.parent,
        local=True,
        report_interval_s=LOCAL_REPORT_INTERVAL_S,
        on_report=Outputs(output, job),
        eval_outputs=output,
    )
    started = time.monotonic()
    bar = ProgressBar(report_path)
    bar.start()
    try:
        report = run_job(job.spec, options)
        code = 0
    except Exception:
        report = TrainerReport.model_validate_json(report_path.read_text())
        code = 1
    finally:
        bar.stop.set()
        bar.join(timeout=2)
    print(summary_table(report, time.monotonic() - started))
    print(f"outputs: {output}")
    return code
