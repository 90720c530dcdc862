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
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kubetune.api.report import TrainerReport
from kubetune.api.v1alpha1 import (
    EpochMetrics,
    EvaluationResult,
    FineTuneJob,
    FineTuneJobStatus,
    StepMetrics,
)
from kubetune.status_mapping import local_rayjob_status, map_rayjob_status

LOCAL_REPORT_INTERVAL_S = 1.0
RUN_LOG = "run.log"


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


def write_metrics(
    path: Path, report: TrainerReport, steps: list[StepMetrics] | None = None
) -> None:
    """One JSON line per point: every step point (the full series when known, else the
    report's downsampled one), every epoch, then the evaluation."""
    lines = [json.dumps({"type": "step", **s.to_wire()}) for s in steps or report.steps]
    lines += [json.dumps({"type": "epoch", **e.to_wire()}) for e in report.epochs]
    if report.evaluation is not None:
        lines.append(json.dumps({"type": "evaluation", **report.evaluation.to_wire()}))
    path.write_text("".join(line + "\n" for line in lines))


def _run_steps(
    epochs: list[EpochMetrics], steps: list[StepMetrics]
) -> tuple[dict[str, int], list[int]]:
    """Where each stage starts on one step axis for the whole run, and each epoch's end on it
    (stages one after the other)."""
    points = [(s.stage, s.step) for s in steps] + [(e.stage, e.step or 0) for e in epochs]
    last: dict[str, int] = {}
    for stage, step in points:
        last[stage] = max(last.get(stage, 0), step)
    offsets: dict[str, int] = {}
    total = 0
    for stage in dict.fromkeys(stage for stage, _ in points):
        offsets[stage] = total
        total += last[stage]
    ends = [
        offsets[e.stage] + (e.step if e.step is not None else index + 1)
        for index, e in enumerate(epochs)
    ]
    return offsets, ends


def plot_learning_curve(
    report: TrainerReport, path: Path, steps: list[StepMetrics] | None = None
) -> None:
    """Loss over optimizer steps (train per step point, validation per epoch on top),
    validation perplexity per epoch, and the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = steps or report.steps
    if not report.epochs and not steps:
        return
    offsets, ends = _run_steps(report.epochs, steps)
    fig, (loss, ppl, lr) = plt.subplots(1, 3, figsize=(15, 4))
    if steps:
        xs = [offsets[s.stage] + s.step for s in steps]
        loss.plot(xs, [s.train_loss for s in steps], label="train loss", color="C0", lw=1)
        lr.plot(xs, [s.learning_rate for s in steps], color="C3")
    if report.epochs:
        loss.plot(
            ends, [e.train_loss for e in report.epochs], "o", color="C0", label="train (epoch)"
        )
        loss.plot(
            ends, [e.validation_loss for e in report.epochs], "s-", color="C1", label="validation"
        )
        ppl.plot(ends, [e.validation_perplexity for e in report.epochs], "s-", color="C2")
    loss.set_title("loss on completion tokens")
    loss.set_yscale("log")  # the first steps fall by orders of magnitude
    loss.legend()
    ppl.set_title("validation perplexity (per epoch)")
    lr.set_title("learning rate")
    for axis in (loss, ppl, lr):
        axis.set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class Outputs:
    """Keeps DIR/status.json, report.json and metrics.jsonl current as reports arrive."""

    def __init__(self, output: Path, job: FineTuneJob):
        self.output = output
        self.job = job
        self.status: FineTuneJobStatus | None = None
        self.steps: list[StepMetrics] | None = None  # the full series, once a stage ended

    def __call__(self, report: TrainerReport) -> None:
        self.status = local_status(self.job, report, self.status)
        write_json(self.output / "status.json", self.status.to_wire())
        write_metrics(self.output / "metrics.jsonl", report, self.steps)
        if report.phase in ("Succeeded", "Failed"):
            plot_learning_curve(report, self.output / "learning_curve.png", self.steps)

    def full_steps(self, steps: list[StepMetrics]) -> None:
        self.steps = list(steps)


# --------------------------------------------------------------------------- display


class Console:
    """The terminal the user watches. While active, the process's own stdout and stderr (file
    descriptors 1 and 2: Ray's driver and forwarded worker output, library warnings, C++
    logs) go to `log`; kubetune's progress bar, summary and errors go to the saved terminal."""

    def __init__(self, log: Path):
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        self.err = os.fdopen(os.dup(2), "w", buffering=1)
        self._log = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(self._log, 1)
        os.dup2(self._log, 2)

    def restore(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self._saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        os.close(self._log)
        self.out.flush()
        self.err.flush()


def bar_fields(report: TrainerReport) -> dict[str, str]:
    """What the progress bar shows beside the step count: epoch, the latest step point's loss,
    learning rate and tokens/s, and the last validation perplexity."""
    fields = {"epoch": f"{report.epoch}/{report.total_epochs}"}
    point = report.steps[-1] if report.steps and report.steps[-1].stage == report.stage else None
    if point is not None:
        fields["loss"] = f"{point.train_loss:.3f}"
        fields["lr"] = f"{point.learning_rate:.2e}"
        fields["tok/s"] = f"{point.tokens_per_second:,.0f}"
    epochs = [e for e in report.epochs if e.stage == report.stage]
    if epochs:
        fields["val_ppl"] = f"{epochs[-1].validation_perplexity:.2f}"
    return fields


class ProgressBar(threading.Thread):
    """Polls report.json (written by the rank-0 worker) and drives one tqdm bar per stage."""

    def __init__(self, path: Path, stream: Any):
        super().__init__(daemon=True)
        self.path = path
        self.stream = stream
        self.stop = threading.Event()

    def run(self) -> None:
        from tqdm import tqdm

        bar = None
        key = None
        stopping = False
        while not stopping:
            stopping = self.stop.wait(0.5)  # one last read after the stop: the final step
            report = self._read()
            if report is None or not report.total_steps:
                continue
            if key != report.stage and report.phase == "Training":
                if bar is not None:
                    bar.close()
                key = report.stage
                bar = tqdm(
                    total=report.total_steps,
                    desc=f"train {report.stage}",
                    unit="step",
                    file=self.stream,
                    dynamic_ncols=True,
                )
            if bar is not None and key == report.stage:
                bar.n = min(report.step, report.total_steps)
                bar.set_postfix(bar_fields(report))
        if bar is not None:
            bar.close()

    def _read(self) -> TrainerReport | None:
        try:
            return TrainerReport.model_validate_json(self.path.read_text())
        except (OSError, ValueError):
            return None


def _epoch_rows(report: TrainerReport) -> list[str]:
    best = report.best_checkpoint
    rows = [f"{'stage':<12} {'epoch':>5} {'train loss':>11} {'val loss':>9} {'val ppl':>10}"]
    for e in report.epochs:
        mark = "  <- best" if best and (e.stage, e.epoch) == (best.stage, best.epoch) else ""
        rows.append(
            f"{e.stage:<12} {e.epoch:>5} {e.train_loss:>11.4f} {e.validation_loss:>9.4f} "
            f"{e.validation_perplexity:>10.2f}{mark}"
        )
    return rows


def _evaluation_rows(evaluation: EvaluationResult) -> list[str]:
    """Every metric of the checkpoint; with a baseline, the base model's and the gain too."""
    ev = evaluation.with_gain()
    rows = [f"evaluation {ev.task} on {ev.samples} test rows ({ev.primary_metric} is the score):"]
    width = max(len(k) for k in ev.metrics) if ev.metrics else 6
    if ev.baseline is None:
        rows += [f"  {k:<{width}} {v:>8.3f}" for k, v in ev.metrics.items()]
        return rows
    gain = ev.gain or {}
    rows.append(f"  {'metric':<{width}} {'base':>8} {'trained':>8} {'gain':>8}")
    for name, value in ev.metrics.items():
        base = ev.baseline.get(name)
        base_text = f"{base:>8.3f}" if base is not None else f"{'-':>8}"
        gain_text = f"{gain[name]:>+8.3f}" if name in gain else f"{'-':>8}"
        rows.append(f"  {name:<{width}} {base_text} {value:>8.3f} {gain_text}")
    return rows


def summary_table(
    report: TrainerReport, elapsed_s: float, files: dict[str, Path] | None = None
) -> str:
    """The end of a run in one screen: the learning curve by epoch, the best checkpoint, what
    happened to the data, the scores (base model, trained, gain), wall time and the files."""
    rows = _epoch_rows(report)
    best = report.best_checkpoint
    if best:
        rows.append(f"best checkpoint: {best.uri} (stage {best.stage}, epoch {best.epoch})")
    for split in report.data:
        dropped = ", ".join(f"{d.count} {d.reason}" for d in split.dropped) or "none dropped"
        rows.append(
            f"data {split.split}: {split.rows_used}/{split.rows_read} rows used ({dropped})"
        )
    if report.evaluation:
        rows += _evaluation_rows(report.evaluation)
    if report.error:
        rows.append(f"error: {report.error}")
    rows.append(f"{report.phase} in {elapsed_s:.0f} s")
    width = max((len(name) for name in files or {}), default=0)
    rows += [f"  {name:<{width}} {path}" for name, path in (files or {}).items()]
    return "\n".join(rows)


# --------------------------------------------------------------------------- command


def load_manifest(path: Path, run_id: str | None = None) -> Any:
    """The FineTuneJob in `path`. For a run (`run_id`): the run id as its uid, as the API
    server would give one, and a local storageURI made absolute, so the status names this
    run's own folder of the storage as the trainer writes it."""
    import yaml

    from kubetune.validation import parse_finetunejob
    from kubetune_trainer import storage

    job = parse_finetunejob(yaml.safe_load(path.read_text()))
    if run_id is None:
        return job
    document = job.to_wire()
    document["metadata"]["uid"] = run_id
    output = document["spec"]["output"]
    output["storageURI"] = storage.absolute(output["storageURI"], path.parent)
    return parse_finetunejob(document)


def output_files(output: Path, job: FineTuneJob, base_dir: Path) -> dict[str, Path]:
    from kubetune.api.v1alpha1 import run_storage
    from kubetune.builders.meta import uid_of
    from kubetune_trainer import storage

    root = storage.absolute(job.spec.output.storage_uri, base_dir)
    checkpoints = Path(run_storage(root, uid_of(job)))
    return {
        "status": output / "status.json",
        "metrics": output / "metrics.jsonl",
        "learning curve": output / "learning_curve.png",
        "log": output / RUN_LOG,
        "checkpoints": checkpoints,
    }


def ray_is_running() -> bool:
    import ray

    return bool(ray.is_initialized())


def stop_ray() -> None:
    import ray

    ray.shutdown()


def handle_run(args: argparse.Namespace) -> int:
    from kubetune.validation import SpecError
    from kubetune_trainer.reporting import FileReporter, ThrottledReporter
    from kubetune_trainer.runner import RunOptions, new_run_id, run_job

    manifest = Path(args.file).resolve()
    run_id = new_run_id()
    try:
        job = load_manifest(manifest, run_id)
    except SpecError as exc:
        print(f"{args.file}: invalid FineTuneJob:", *exc.problems, sep="\n  ", file=sys.stderr)
        return 2
    output = Path(args.output or Path("kubetune-output") / job.metadata.name).resolve()
    output.mkdir(parents=True, exist_ok=True)
    report_path = output / "report.json"
    outputs = Outputs(output, job)
    options = RunOptions(
        job_name=job.metadata.name,
        reporter=ThrottledReporter(FileReporter(report_path), 0.0),
        workdir=output / "work",
        report_target=f"file:{report_path}",
        base_dir=manifest.parent,
        local=True,
        report_interval_s=LOCAL_REPORT_INTERVAL_S,
        on_report=outputs,
        on_steps=outputs.full_steps,
        eval_outputs=output,
        job_uid=run_id,
    )
    files = output_files(output, job, manifest.parent)
    print(f"kubetune run {job.metadata.name}: Ray and library logs go to {files['log']}")
    started = time.monotonic()
    console = Console(files["log"])
    bar = ProgressBar(report_path, console.err)
    bar.start()
    ray_was_running = ray_is_running()
    try:
        report = run_job(job.spec, options)
        code = 0
    except Exception:
        report = TrainerReport.model_validate_json(report_path.read_text())
        code = 1
    finally:
        bar.stop.set()
        bar.join(timeout=2)
        if not ray_was_running:
            stop_ray()  # flushes the worker lines Ray still holds into the log, not the console
        console.restore()
    print(summary_table(report, time.monotonic() - started, files))
    return code
