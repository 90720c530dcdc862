"""One FineTuneJob end to end on a Ray cluster (KubeRay's or a local one): data, every stage
under TorchTrainer, best checkpoint, evaluation, and the report after every phase change.

The driver prepares and tokenizes the data once (workers get the examples, so every worker and
every retry trains on identical data), trains each stage from the previous stage's best
checkpoint, and evaluates the last stage's best checkpoint in a Ray task (on a GPU when the
cluster has them and the node pool is not CPU-only, see `use_gpus`; the head has none).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubetune.api.models import BUILTIN_PREFIX
from kubetune.api.report import TrainerErrorReason, TrainerReport, downsample
from kubetune.api.v1alpha1 import (
    MAX_RESUMES,
    BestCheckpoint,
    EpochMetrics,
    EvaluationResult,
    FineTuneJobSpec,
    ResumePoint,
    StageSpec,
    StepMetrics,
    run_storage,
    stage_training,
    stages_of,
)
from kubetune.diagnosis import classify_error
from kubetune.planning import generation_devices, shape_of
from kubetune_trainer import durable, storage
from kubetune_trainer.checkpoints import CheckpointRecord, select_best_checkpoint
from kubetune_trainer.data import DataError
from kubetune_trainer.data.loaders import LoadedRows, resolve_local
from kubetune_trainer.data.prepare import (
    DropLog,
    PreparedData,
    load_texts,
    prepare_data,
    test_rows,
)
from kubetune_trainer.data.presets import Preset, preset_for_task
from kubetune_trainer.reporting import (
    ThrottledReporter,
    beat,
    deliver_final_report,
    now_rfc3339,
    redact,
)
from kubetune_trainer.tasks.scorers import ScorerError, headline
from kubetune_trainer.train_loop import (
    StageConfig,
    StageState,
    read_files,
    stage_steps,
    stage_uri,
)

FAULT_ENV = "KUBETUNE_FAULT_INJECT"  # tests only: JSON {"rank", "epoch", "step", "marker"}
MAX_FAILURES_ENV = "KUBETUNE_MAX_FAILURES"
DEFAULT_MAX_FAILURES = 2


@dataclass
class RunOptions:
    job_name: str
    reporter: ThrottledReporter
    workdir: Path
    report_target: str | None = None
    namespace: str | None = None
    base_dir: Path | None = None
    local: bool = False
    report_interval_s: float = 10.0
    on_report: Callable[[TrainerReport], None] | None = None
    # Called after each stage with the full per-step series so far (the report's is downsampled).
    on_steps: Callable[[list[StepMetrics]], None] | None = None
    eval_outputs: Path | None = None
    # The FineTuneJob's uid (the operator matches reports on it), or `kubetune run`'s run id:
    # stamped into every report, and the name of the run's own folder of the storage.
    job_uid: str | None = None


@dataclass
class JobState:
    """The driver's view across stages."""

    report: TrainerReport
    tokenizer: Any = None
    model_source: dict[str, Any] = field(default_factory=dict)
    base_model: str = ""
    records: list[CheckpointRecord] = field(default_factory=list)
    steps: list[StepMetrics] = field(default_factory=list)  # every stage's full series


def publish(options: RunOptions, report: TrainerReport, force: bool = True) -> None:
    options.reporter.write(report, force=force)
    if options.on_report is not None:
        options.on_report(report)


def init_ray(local: bool) -> None:
    """Join the cluster this runs in (KubeRay head: RAY_ADDRESS or a running `ray start`), else
    start a local Ray. Locally Ray is told of at least 4 CPUs: on tiny machines Ray Data and
    Train otherwise deadlock waiting for a CPU the controller holds."""
    import ray

    if ray.is_initialized():
        return
    if not local or os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(address=os.environ.get("RAY_ADDRESS", "auto"))
            return
        except ConnectionError:
            if os.environ.get("RAY_ADDRESS"):
                raise
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False)


def cluster_has_gpus() -> bool:
    import ray

    return bool(ray.cluster_resources().get("GPU", 0))


def use_gpus(spec: FineTuneJobSpec) -> bool:
    """Whether training and evaluation ask Ray for GPUs. Never on a CPU-only node pool (its
    pods have no GPU to give, even where Ray might see one); otherwise whenever the cluster
    has GPUs, so `kubetune run` on a CPU machine trains on CPUs whatever the node pool says."""
    return not spec.compute.node_pool.cpu_only and cluster_has_gpus()


# --------------------------------------------------------------------------- model setup


def training_texts(loaded: dict[str, LoadedRows], preset: Preset) -> list[str]:
    texts = []
    for _, row in loaded["train"].rows:
        try:
            texts.append(preset.training_text(row))
        except ValueError:
            continue
    return texts


def initial_model(
    spec: FineTuneJobSpec, texts: list[str], workdir: Path
) -> tuple[dict[str, Any], Any]:
    """(model source for the workers, base tokenizer)."""
    from kubetune_trainer.model import build_builtin_model, load_tokenizer

    name = spec.model.name
    if name.startswith(BUILTIN_PREFIX):
        folder = workdir / name.removeprefix(BUILTIN_PREFIX)
        folder = build_builtin_model(texts, folder, seed=spec.training.seed, name=name)
        return {"kind": "files", "files": read_files(folder)}, load_tokenizer(str(folder))
    local = Path(name)
    if local.is_dir():
        return {"kind": "storage", "uri": str(local.resolve())}, load_tokenizer(str(local))
    return (
        {"kind": "hub", "name": name, "revision": spec.model.revision},
        load_tokenizer(name, spec.model.revision),
    )


def tokenizer_files(tokenizer: Any) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return read_files(Path(tmp))


# --------------------------------------------------------------------------- stages


def fault_from_env() -> dict[str, Any] | None:
    raw = os.environ.get(FAULT_ENV)
    return json.loads(raw) if raw else None


def fit_stage(config: StageConfig, workers: int, run_name: str, ray_storage: str) -> StageState:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from kubetune_trainer.train_loop import train_stage

    # Without GPUs Ray Train asks for 1 CPU per worker; a CPU-only pool's pods offer exactly one
    # logical CPU each (CPU_WORKER_START_PARAMS in kubetune.builders.rayjob): one worker per pod.
    trainer = TorchTrainer(
        train_stage,
        train_loop_config={"stage": config},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=config.use_gpu),
        run_config=RunConfig(
            name=run_name,
            storage_path=ray_storage,
            failure_config=FailureConfig(
                max_failures=int(os.environ.get(MAX_FAILURES_ENV, DEFAULT_MAX_FAILURES))
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    finished = durable.finished_stage(stage_uri(config))
    if finished is None:
        raise RuntimeError(f"stage {config.stage} finished without recording its state")
    return StageState(**finished)


def trained_earlier(config: StageConfig) -> StageState | None:
    """The state of this stage when an earlier attempt of the job finished it (a RayJob
    retry on a fresh cluster): it is not trained again."""
    finished = durable.finished_stage(stage_uri(config))
    if finished is None:
        return None
    state = StageState(**finished)
    point = ResumePoint(
        stage=config.stage,
        epoch=state.epoch,
        step=state.step,
        saved_by="StageEnd",
        time=now_rfc3339(),
    )
    state.resumes = [*state.resumes, point.to_wire()][-MAX_RESUMES:]
    return state


def ray_storage_path(storage_uri: str, options: RunOptions) -> str:
    """Where Ray Train keeps the resume state: the job's storage (object store or a volume
    every pod mounts) on a cluster, the output folder for `kubetune run`."""
    if options.local:
        return str((options.workdir / "ray-runs").resolve())
    if storage.is_remote(storage_uri):
        return storage.join(storage_uri, "ray-runs")
    return str(Path(resolve_local(storage_uri)) / "ray-runs")


def run_stage(
    spec: FineTuneJobSpec,
    index: int,
    stage: StageSpec,
    job: JobState,
    prepared: PreparedData,
    options: RunOptions,
    special_tokens: tuple[str, ...] = (),
) -> None:
    training = stage_training(spec, stage)
    report = job.report
    report.phase, report.stage, report.stage_index = "Training", stage.name, index
    report.epoch, report.step, report.total_epochs = 0, 0, training.epochs
    beat(report, f"starting stage {stage.name}")
    publish(options, report)
    config = StageConfig(
        stage=stage.name,
        stage_index=index,
        training=training,
        model_source=job.model_source,
        tokenizer_files=tokenizer_files(job.tokenizer),
        train=prepared.train,
        validation=prepared.validation,
        storage_uri=run_storage(
            storage.absolute(spec.output.storage_uri, options.base_dir), options.job_uid
        ),
        report=report.model_copy(deep=True),
        report_target=options.report_target,
        report_namespace=options.namespace,
        report_interval_s=options.report_interval_s,
        use_gpu=use_gpus(spec),
        fault=fault_from_env(),
        special_tokens=special_tokens,
    )
    report.total_steps = stage_steps(config, spec.compute.workers)
    config.report.total_steps = report.total_steps
    state = trained_earlier(config) or fit_stage(
        config,
        spec.compute.workers,
        f"{options.job_name}-{stage.name}",
        ray_storage_path(config.storage_uri, options),
    )
    report.resumes = [r for r in report.resumes if r.stage != stage.name]
    report.resumes += [ResumePoint.model_validate(r) for r in state.resumes]
    report.resumes = report.resumes[-MAX_RESUMES:]
    report.epochs = [e for e in report.epochs if e.stage != stage.name]
    report.epochs += [EpochMetrics.model_validate(e) for e in state.epochs]
    job.steps = [s for s in job.steps if s.stage != stage.name]
    job.steps += [StepMetrics.model_validate(s) for s in state.steps]
    report.steps = downsample(job.steps)
    if options.on_steps is not None:
        options.on_steps(job.steps)
    report.epoch, report.step = state.epoch, state.step
    job.records = state.checkpoint_records()
    best = select_best_checkpoint(job.records)
    if best is None:
        raise RuntimeError(f"stage {stage.name} produced no checkpoint")
    best_uri = best.uri
    if training.method == "lora":
        best_uri = merge_best_adapter(config, best, options)
    report.best_checkpoint = BestCheckpoint(
        uri=best_uri,
        stage=best.stage,
        epoch=best.epoch,
        validation_perplexity=best.validation_perplexity,
    )
    job.model_source = {"kind": "storage", "uri": best_uri}
    # The workers beat on their own copy of the report: the driver's is as old as the stage.
    beat(report, f"finished stage {stage.name}")
    publish(options, report)


def merge_best_adapter(config: StageConfig, best: CheckpointRecord, options: RunOptions) -> str:
    """The stage's best LoRA adapter merged into its base, once, beside the adapter; in a Ray
    task (on a worker: the head may be too small to hold the base model)."""
    import ray

    from kubetune_trainer.train_loop import merge_lora_checkpoint

    target = storage.join(stage_uri(config), f"epoch-{best.epoch:03d}-merged")
    if durable.committed(target):  # merged by an earlier attempt
        return target
    task: Any = ray.remote(num_cpus=1)(merge_lora_checkpoint)
    return str(ray.get(task.remote(config, best.uri, target)))


# --------------------------------------------------------------------------- evaluation


def evaluate(
    spec: FineTuneJobSpec,
    job: JobState,
    preset: Preset,
    prepared: PreparedData,
    options: RunOptions,
    scorer: dict[str, Any] | None = None,
) -> EvaluationResult:
    from kubetune_trainer.generation import GenerationOptions

    ev = spec.evaluation
    rows = prepared.test
    gpus = use_gpus(spec)
    devices = generation_devices(spec, shape_of(spec.model.name)) if gpus else {}
    assert job.report.best_checkpoint is not None
    common: dict[str, Any] = {"batch_size": ev.batch_size, "max_new_tokens": ev.max_new_tokens}
    tuned = generate_rows(
        spec,
        gpus,
        job.report.best_checkpoint.uri,
        [r.prompt for r in rows],
        GenerationOptions(preset.stop_token, devices=devices.get("evaluation", 1), **common),
        job,
        options,
        "the best checkpoint",
    )
    metrics, details = scored(preset.name, tuned, rows, scorer)
    save_eval_outputs(options, "checkpoint", rows, tuned["predictions"], details)
    baseline = None
    if ev.baseline:
        shots = _few_shot_rows(prepared, ev.few_shot_examples)
        prompts = preset.baseline_prompts([r.fields for r in rows], shots)
        base = generate_rows(
            spec,
            gpus,
            job.base_model,
            prompts,
            GenerationOptions(
                preset.stop_token,
                revision=spec.model.revision if job.base_model == spec.model.name else None,
                special_tokens=preset.special_tokens,
                stop_text=preset.baseline_stop_text,
                devices=devices.get("baseline", 1),
                **common,
            ),
            job,
            options,
            "the base model",
        )
        baseline, base_details = scored(preset.name, base, rows, scorer)
        save_eval_outputs(options, "baseline", rows, base["predictions"], base_details, prompts)
    primary = headline(preset.name, scorer, metrics)
    return EvaluationResult(
        task=preset.name,
        samples=len(rows),
        primary_metric=primary,
        score=metrics.get(primary, 0.0),
        metrics=metrics,
        baseline=baseline,
    )


def scored(
    task: str, generated: dict[str, Any], rows: list[Any], scorer: dict[str, Any] | None
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics (the scorer's, then how generations ended) and per-row verdicts. Scored here,
    in the driver, where the scorer was checked at start."""
    from kubetune_trainer.generation import score

    metrics, details = score(task, generated["predictions"], rows, scorer)
    metrics = {**metrics, **generated["endings"].metrics()}
    return {k: float(v) for k, v in metrics.items()}, details


def generation_actors(workers: int, devices: int, batches: int) -> int:
    """Copies of the model that generate side by side: one per worker's GPU share (a copy
    spans `devices` GPUs), never more than there are batches to hand out."""
    return max(1, min(workers // max(1, devices), batches))


def generate_rows(
    spec: FineTuneJobSpec,
    gpus: bool,
    model: str,
    prompts: list[str],
    how: Any,
    job: JobState,
    options: RunOptions,
    what: str,
) -> dict[str, Any]:
    """Greedy completions of `prompts` by `model`: one Ray task, or Ray Data actors (one per
    worker) when the job has more than one; progress is published as heartbeats."""
    import ray

    from kubetune_trainer.generation import generate_for_model, generate_sharded

    batches = -(-len(prompts) // how.batch_size)
    actors = generation_actors(spec.compute.workers, how.devices if gpus else 1, batches)
    box = ray.remote(num_cpus=0)(BatchCounter).remote()
    task: Any
    if actors > 1:
        task = ray.remote(generate_sharded).options(num_cpus=0)  # type: ignore[arg-type]
        ref = task.remote(model, prompts, how, actors=actors, gpus=gpus, counter=box)
    else:
        task = ray.remote(generate_for_model).options(
            num_cpus=1, num_gpus=how.devices if gpus else 0
        )
        ref = task.remote(model, prompts, how, box)
    return dict(wait_beating(ref, box, job.report, options, what))


HEARTBEAT_POLL_S = 5.0


class BatchCounter:
    """A Ray actor the evaluation task tells of each generated batch, so the driver can
    publish progress (a heartbeat) while one long task runs elsewhere."""

    def __init__(self) -> None:
        self.done, self.total, self.at = 0, 0, ""

    def batch(self, done: int, total: int) -> None:
        self.done, self.total, self.at = done, total, now_rfc3339()

    def add(self, rows: int, total: int) -> None:
        """`rows` more done (from one of several generating actors)."""
        self.batch(self.done + rows, total)

    def last(self) -> tuple[int, int, str]:
        return self.done, self.total, self.at


def wait_beating(ref: Any, box: Any, report: TrainerReport, options: RunOptions, what: str) -> Any:
    """`ray.get(ref)`, publishing a heartbeat (throttled) for each batch the task finished
    (`box`: the task's own BatchCounter, made before the task was submitted)."""
    import ray

    beat(report, f"evaluating {what}: loading it")
    publish(options, report, force=False)
    seen = ""
    while not ray.wait([ref], timeout=HEARTBEAT_POLL_S)[0]:
        done, total, at = ray.get(box.last.remote())
        if at and at != seen:
            seen = at
            beat(report, f"evaluating {what}: {done}/{total} rows generated", at)
            publish(options, report, force=False)
    return ray.get(ref)


def _few_shot_rows(prepared: PreparedData, count: int) -> list[dict[str, Any]]:
    return prepared.few_shot[:count]


def save_eval_outputs(
    options: RunOptions,
    name: str,
    rows: list[Any],
    predictions: list[str],
    details: list[dict[str, Any]],
    prompts: list[str] | None = None,
) -> None:
    """predictions-<name>.jsonl: each row's prompt (as the model saw it: `prompts` when not
    the row's own, as for the baseline), prediction, reference and verdict."""
    if options.eval_outputs is None:
        return
    options.eval_outputs.mkdir(parents=True, exist_ok=True)
    with (options.eval_outputs / f"predictions-{name}.jsonl").open("w") as handle:
        seen = prompts if prompts is not None else [row.prompt for row in rows]
        for row, prompt, prediction, detail in zip(rows, seen, predictions, details, strict=False):
            handle.write(
                json.dumps(
                    {
                        "row": row.row,
                        "prompt": prompt,
                        "prediction": prediction,
                        "reference": row.completion,
                        "verdict": detail,
                    },
                    default=str,
                )
                + "\n"
            )


# --------------------------------------------------------------------------- job


def run_job(spec: FineTuneJobSpec, options: RunOptions) -> TrainerReport:
    """Run every stage and the evaluation; the report ends Succeeded, or Failed with the error
    (re-raised so the process exits non-zero)."""
    stages = stages_of(spec)
    if options.job_uid is None:  # every run writes under a folder of its own
        options = dataclasses.replace(options, job_uid=new_run_id())
    job = JobState(report=TrainerReport(total_stages=len(stages), job_uid=options.job_uid))
    publish(options, job.report)
    try:
        _run(spec, stages, job, options)
    except BaseException as exc:
        job.report.phase = "Failed"
        job.report.error = redact(f"{type(exc).__name__}: {exc}")
        job.report.error_reason = error_reason_of(exc)
        publish(options, job.report)
        print(redact(traceback.format_exc()), file=sys.stderr)
        deliver_final_report(options.reporter)
        raise
    deliver_final_report(options.reporter)
    return job.report


def new_run_id() -> str:
    """A run's name for `kubetune run` (sorts by start time; unique without coordination)."""
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def data_errors() -> Iterator[None]:
    """Reading and preparing the job's data: what fails here is the data's fault."""
    try:
        yield
    except (DataError, ScorerError):
        raise
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        # Not every OSError: an object store timing out or a full disk is not the data's fault.
        raise DataError(f"{type(exc).__name__}: {exc}") from exc


def error_reason_of(exc: BaseException) -> TrainerErrorReason | None:
    """The kind of a failure, for the operator's reason (kubetune.diagnosis reads the text of
    errors that crossed a Ray boundary, which keeps the original's name and message)."""
    if isinstance(exc, DataError):
        return "DataError"
    if isinstance(exc, MemoryError):
        return "OOMKilled"
    return classify_error(f"{type(exc).__name__}: {exc}")


def _run(
    spec: FineTuneJobSpec, stages: list[StageSpec], job: JobState, options: RunOptions
) -> None:
    from kubetune_trainer.model import add_special_tokens

    options.workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(options.workdir / "ray-runs", ignore_errors=True)
    presets = [preset_for_task(stage.task or spec.task) for stage in stages]
    with data_errors():
        loaded = [load_texts(stage.data, options.base_dir) for stage in stages]
    texts = [
        t
        for rows, preset in zip(loaded, presets, strict=True)
        for t in training_texts(rows, preset)
    ]
    job.model_source, job.tokenizer = initial_model(spec, texts, options.workdir)
    job.base_model = _base_model_path(spec, job)
    with data_errors():
        presets = [bound(preset, job.tokenizer, spec.model.name) for preset in presets]
    scorer = scorer_of(stages[-1].task or spec.task)
    if spec.evaluation.enabled:
        check_scorer(presets[-1], scorer, loaded[-1])  # before training, not after it
    init_ray(options.local)  # after the data loaded: a bad path fails in seconds, not after Ray
    prepared: PreparedData | None = None
    for index, (stage, preset) in enumerate(zip(stages, presets, strict=True)):
        add_special_tokens(job.tokenizer, preset.special_tokens)
        last = index == len(stages) - 1
        with data_errors():
            prepared = prepare_data(
                stage.data,
                preset,
                job.tokenizer,
                context_length=spec.training.context_length,
                seed=spec.training.seed,
                loss_on_prompt=spec.training.loss_on_prompt,
                stage=stage.name if len(stages) > 1 else "",
                base_dir=options.base_dir,
                loaded=loaded[index],
                test_limit=spec.evaluation.max_samples if last else None,
            )
        job.report.data += prepared.reports
        run_stage(spec, index, stage, job, prepared, options, preset.special_tokens)
    assert prepared is not None
    if spec.evaluation.enabled and prepared.test:
        job.report.phase = "Evaluating"
        beat(job.report, "evaluation starting")
        publish(options, job.report)
        job.report.evaluation = evaluate(spec, job, presets[-1], prepared, options, scorer)
    job.report.phase = "Succeeded"
    publish(options, job.report)


def bound(preset: Preset, tokenizer: Any, model: str) -> Preset:
    """A chat preset rendering with the tokenizer's chat template; others as they are."""
    from kubetune_trainer.model import chat_renderer

    if preset.layout != "chat":
        return preset
    return preset.with_chat_template(chat_renderer(tokenizer, preset.stop_token, model))


def scorer_of(task: Any) -> dict[str, Any] | None:
    return None if task.scorer is None else dict(task.scorer.to_wire())


def check_scorer(
    preset: Preset, scorer: dict[str, Any] | None, loaded: dict[str, LoadedRows]
) -> None:
    """Import the user's scorer and score the first test row's reference answer against
    itself, so a scorer that cannot work fails the job now (ScorerError), not after training."""
    from kubetune_trainer.generation import score

    if scorer is None or "test" not in loaded:
        return
    rows = test_rows(loaded["test"].rows[:20], preset, DropLog())
    if rows:
        score(preset.name, [rows[0].completion], rows[:1], scorer)


def _base_model_path(spec: FineTuneJobSpec, job: JobState) -> str:
    source = job.model_source
    if source["kind"] == "files":
        return str(_write_base(source["files"]))
    return source.get("uri") or source["name"]


def _write_base(files: dict[str, bytes]) -> Path:
    from kubetune_trainer.train_loop import write_files

    return write_files(files, Path(tempfile.mkdtemp(prefix="kubetune-base-")))
