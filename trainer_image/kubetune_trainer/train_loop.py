"""The per-worker training function run by Ray Train's TorchTrainer (one stage of a job).

Accelerate drives either DeepSpeed (ZeRO stage/offload from the spec, optimizer and scheduler
declared in the DeepSpeed config) or plain DDP. What this loop does that the case study did not:
loss only on completion tokens, token-weighted across workers; packing; a new seeded order each
epoch; the LR schedule in optimizer steps (the DDP scheduler is NOT handed to Accelerate, which
would step it once per process); the optimizer/scheduler/RNG state and the data position saved
to the job's storage at each epoch's end and on a preemption notice (at an optimizer-step
boundary), so a restarted worker group or a new attempt on a fresh cluster resumes exactly
(`durable`); consolidated HF checkpoints with the tokenizer, written only for epochs that can
be kept; best-k retention by perplexity.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch

from kubetune.api.report import TrainerReport, downsample
from kubetune.api.v1alpha1 import (
    MAX_RESUMES,
    BestCheckpoint,
    EpochMetrics,
    ResumePoint,
    ResumeSource,
    StepMetrics,
    TrainingSpec,
)
from kubetune_trainer import durable, storage
from kubetune_trainer.checkpoints import (
    CheckpointRecord,
    can_be_kept,
    checkpoints_to_delete,
    select_best_checkpoint,
    should_stop_early,
)
from kubetune_trainer.data.tokenization import (
    Example,
    WorkerBatches,
    batches_per_worker,
    epoch_units,
    model_inputs,
    packed_positions_supported,
    token_loss_sum,
    worker_batches,
)
from kubetune_trainer.deepspeed_config import ADAM_BETAS, ADAM_EPS, build_deepspeed_config
from kubetune_trainer.metrics import (
    WINDOW_FIELDS,
    StepWindow,
    TokenLoss,
    eta_seconds,
    lr_multiplier,
    perplexity,
    step_point,
    warmup_steps,
)
from kubetune_trainer.preemption import PreemptionNotice
from kubetune_trainer.reporting import ThrottledReporter, beat, now_rfc3339, reporter_from_target

STATE_FILE = "kubetune_state.json"
PROGRESS_FLUSH_S = 30.0
STEPS_FILE = "steps.jsonl"  # the stage's full per-step series, beside its checkpoints


@dataclass
class StageConfig:
    """Everything a worker needs for one stage; pickled to the workers by Ray."""

    stage: str
    stage_index: int
    training: TrainingSpec
    model_source: dict[str, Any]
    tokenizer_files: dict[str, bytes]
    train: list[Example]
    validation: list[Example]
    storage_uri: str
    report: TrainerReport
    report_target: str | None = None
    report_namespace: str | None = None
    report_interval_s: float = 10.0
    use_gpu: bool = False
    fault: dict[str, Any] | None = None  # tests: FaultInjector's kill or preemption notice
    special_tokens: tuple[str, ...] = ()  # the task's; LoRA trains their embedding/head rows


@dataclass
class StageState:
    """What survives a restart: epochs done, optimizer steps, the data position in the epoch
    under way, the learning curve so far and where earlier restarts resumed."""

    epoch: int = 0  # epochs finished
    step: int = 0
    epochs: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    steps: list[dict[str, Any]] = field(default_factory=list)  # StepMetrics, wire form
    micro_step: int = 0  # micro-batches of epoch `epoch + 1` done (a step boundary)
    epoch_loss_sum: float = 0.0  # their token-loss sum over all workers
    saved_by: ResumeSource = "EpochEnd"  # what made the save this state was loaded from
    resumes: list[dict[str, Any]] = field(default_factory=list)  # ResumePoint, wire form

    def checkpoint_records(self) -> list[CheckpointRecord]:
        return [CheckpointRecord(**r) for r in self.records]


# --------------------------------------------------------------------------- planning


def stage_epochs(config: StageConfig) -> int:
    return config.training.epochs


def epoch_steps(config: StageConfig, world_size: int, epoch: int) -> int:
    """Optimizer steps of one epoch, counted from the very units (shuffled, packed) that the
    epoch trains on, so the schedule ends on the last step and the ETA is right."""
    t = config.training
    units = epoch_units(
        config.train,
        epoch=epoch,
        seed=t.seed,
        packing=t.packing,
        context_length=t.context_length,
    )
    micro = batches_per_worker(
        len(units), world_size, t.batch_size_per_device, t.gradient_accumulation_steps
    )
    return micro // t.gradient_accumulation_steps


def stage_uri(config: StageConfig) -> str:
    """The stage's folder of the job's storage (checkpoints, resume points, steps.jsonl)."""
    return storage.join(config.storage_uri, config.stage)


def stage_steps(config: StageConfig, world_size: int) -> int:
    """Optimizer steps of the whole stage (epochs are numbered from 1, as the loop runs them)."""
    return sum(epoch_steps(config, world_size, e) for e in range(1, stage_epochs(config) + 1))


# --------------------------------------------------------------------------- setup


def materialize(source: dict[str, Any], workdir: Path) -> tuple[str, str | None]:
    """A path (or hub id) from_pretrained can load, and the hub revision if any."""
    if source["kind"] == "hub":
        return source["name"], source.get("revision")
    if source["kind"] == "files":
        return str(write_files(source["files"], workdir / "model")), None
    # The previous stage's best (or a model in storage): one copy per node, not per worker.
    return str(storage.download_once_per_node(source["uri"])), None


def write_files(files: dict[str, bytes], target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (target / name).write_bytes(data)
    return target


def read_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def make_accelerator(config: StageConfig, world_size: int) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    t = config.training
    precision = {"bf16": "bf16", "fp16": "fp16"}.get(t.precision, "no")
    handlers = [] if config.use_gpu else [InitProcessGroupKwargs(backend="gloo")]
    plugin = None
    if t.deepspeed.enabled:
        plugin = DeepSpeedPlugin(hf_ds_config=build_deepspeed_config(t, world_size))
    # cpu=True would make Accelerate fall back to DDP and ignore the DeepSpeed plugin; DeepSpeed
    # picks its CPU accelerator by itself when there is no GPU.
    return Accelerator(
        cpu=not config.use_gpu and plugin is None,
        mixed_precision=precision,
        deepspeed_plugin=plugin,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        kwargs_handlers=handlers,
    )


def load_stage_model(
    config: StageConfig, workdir: Path, tokenizer: Any
) -> tuple[Any, str, str | None]:
    from kubetune_trainer.model import load_model, resize_for_tokenizer

    t = config.training
    path, revision = materialize(config.model_source, workdir)
    model = load_model(path, revision, load_dtype(t), t.attn_implementation)
    base_rows = model.get_input_embeddings().weight.shape[0]
    torch.manual_seed(t.seed)  # the same new embedding rows on every worker
    resize_for_tokenizer(model, tokenizer)
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if t.method == "lora":
        rows = trainable_token_rows(tokenizer, config.special_tokens, base_rows)
        model = apply_lora(model, t, rows)
    return model, path, revision


def load_dtype(training: TrainingSpec) -> torch.dtype:
    """The dtype weights load in: the training precision under DeepSpeed (its engine keeps the
    fp32 master copy) and for LoRA's frozen base on every backend (7B: 13.5 GB in bf16, not
    27 GB in fp32); fp32 for full training under DDP, whose AdamW updates the weights as
    loaded while autocast computes in the training precision."""
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(training.precision)
    if half is not None and (training.deepspeed.enabled or training.method == "lora"):
        return half
    return torch.float32


def trainable_token_rows(
    tokenizer: Any, special_tokens: Sequence[str], base_rows: int
) -> list[int]:
    """Embedding/head rows LoRA must train: the task's special tokens and any row the resize
    added. Frozen, they keep their initial values and the model can never emit its stop token."""
    ids = {int(i) for i in tokenizer.convert_tokens_to_ids(list(special_tokens))}
    return sorted(ids | set(range(base_rows, len(tokenizer))))


def lora_config(training: TrainingSpec, token_rows: Sequence[int] = ()) -> Any:
    """peft's LoraConfig; the token rows are trained in the input embedding AND the output head
    (Llama-2's head is untied: rows trained in the embedding alone never reach the logits)."""
    from peft import LoraConfig

    from kubetune.api.v1alpha1 import LoraSpec

    spec = training.lora or LoraSpec()
    rows = list(token_rows)
    return LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        task_type="CAUSAL_LM",
        trainable_token_indices={"embed_tokens": rows, "lm_head": rows} if rows else None,
    )


def apply_lora(model: Any, training: TrainingSpec, token_rows: Sequence[int] = ()) -> Any:
    from peft import get_peft_model

    if training.gradient_checkpointing:
        model.enable_input_require_grads()
    return get_peft_model(model, lora_config(training, token_rows))


def make_optimizer(model: Any, config: StageConfig, total_steps: int) -> tuple[Any, Any]:
    """AdamW and the one learning-rate schedule (`lr_multiplier`) for both backends: under
    DeepSpeed the schedule is handed over as a callable and DeepSpeed steps it at each
    accumulation boundary. No optimizer step runs at learning rate 0, and zero warmup works."""
    t = config.training
    params = [p for p in model.parameters() if p.requires_grad]
    warmup = warmup_steps(total_steps, t.warmup_ratio)
    adam: dict[str, Any] = {
        "lr": t.learning_rate,
        "betas": ADAM_BETAS,
        "eps": ADAM_EPS,
        "weight_decay": t.weight_decay,
    }

    def schedule(optimizer: Any) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_multiplier(step, total_steps, warmup, t.scheduler)
        )

    if t.deepspeed.enabled:
        from accelerate.utils import DummyOptim, DummyScheduler

        optimizer = DummyOptim(params, **adam)
        return optimizer, DummyScheduler(optimizer, lr_scheduler_callable=schedule)
    optimizer = torch.optim.AdamW(params, **adam)
    return optimizer, schedule(optimizer)


def require_deepspeed_engine(model: Any) -> None:
    """Fail loudly if Accelerate silently chose another backend (its DummyOptim would then
    never step, and the run would 'train' without learning)."""
    if type(model).__name__ != "DeepSpeedEngine":
        raise RuntimeError(
            f"DeepSpeed was requested but Accelerate prepared {type(model).__name__}"
        )


# --------------------------------------------------------------------------- steps


class FaultInjector:
    """Test hook, fired once at (rank, epoch, micro-step) (a marker file makes it fire on the
    first attempt only, like a node loss): mode `kill` ends this worker process at once;
    `preempt` runs the worker pods' preStop hook as kubelet would (it writes the notice, then
    waits for the save) and goes on training. With `stepLog`, rank 0 appends every optimizer
    step it trains and a fingerprint of its data: what proves a resumed run skips and repeats
    nothing."""

    def __init__(self, fault: dict[str, Any] | None, rank: int):
        fault = fault or {}
        self.fault = fault if fault.get("rank") == rank and "marker" in fault else None
        self.scratch = Path(fault["scratch"]) if fault.get("scratch") else None
        self.step_log = Path(fault["stepLog"]) if fault.get("stepLog") and rank == 0 else None

    def maybe_fire(self, epoch: int, micro_step: int) -> None:
        if self.fault is None or (epoch, micro_step) != (self.fault["epoch"], self.fault["step"]):
            return
        marker = Path(self.fault["marker"])
        if marker.exists():
            return
        mode = self.fault.get("mode", "kill")
        marker.write_text(f"{mode} at epoch {epoch} micro-step {micro_step}")
        if mode == "kill":
            os._exit(1)
        self.run_prestop_hook()

    def run_prestop_hook(self) -> None:
        import subprocess
        import sys

        from kubetune_trainer.preemption import notice_path

        root = self.scratch or storage.scratch_root()
        command = [sys.executable, "-m", "kubetune_trainer.preemption", "--root", str(root)]
        subprocess.Popen(command, start_new_session=True)
        deadline = time.monotonic() + 60
        while not notice_path(root).exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the preStop hook wrote no notice within 60 s")
            time.sleep(0.05)

    def log_step(self, epoch: int, step: int, data: list[int]) -> None:
        if self.step_log is not None:
            with self.step_log.open("a") as handle:
                handle.write(json.dumps({"epoch": epoch, "step": step, "data": data}) + "\n")


class Preempted(RuntimeError):
    """Raised by every rank once the preemption save is committed: Ray Train restarts the
    worker group, which resumes from that save."""


def global_sum(accelerator: Any, value: torch.Tensor) -> torch.Tensor:
    return accelerator.reduce(value.detach().to(accelerator.device).float(), reduction="sum")


def window_scale(
    accelerator: Any,
    label_counts: list[int],
    first: int,
    accumulation: int,
    world_size: int,
    notice: bool = False,
) -> tuple[torch.Tensor, bool]:
    """What each micro-step's token-loss sum is multiplied by so the optimizer step's gradient
    is the mean over every completion token of the whole accumulation window on all workers:
    world size (the gradient all-reduce averages) x accumulation steps (Accelerate and DeepSpeed
    divide each backward by them) / the window's completion tokens summed over workers. One
    collective per optimizer step; the counts come from the examples, so no micro-step waits
    for the device. The same collective carries whether any worker got a preemption notice,
    so all of them stop at the same step boundary."""
    local = torch.tensor([float(sum(label_counts[first : first + accumulation])), float(notice)])
    tokens, notices = global_sum(accelerator, local)
    return world_size * accumulation / tokens.clamp(min=1), bool(notices > 0)


def train_micro_step(
    accelerator: Any, model: Any, batch: dict[str, torch.Tensor], scale: torch.Tensor
) -> torch.Tensor:
    """Forward + backward of one micro-batch; returns its token-loss sum (on the device)."""
    labels = batch["labels"].to(accelerator.device)
    logits = model(**model_inputs(batch, model, accelerator.device)).logits
    loss_sum, _ = token_loss_sum(logits, labels)
    accelerator.backward(loss_sum * scale)
    return loss_sum.detach()


def optimizer_step(
    accelerator: Any, model: Any, optimizer: Any, scheduler: Any, config: StageConfig
) -> Any:
    """Clip, step, schedule: only at accumulation boundaries (DeepSpeed does all of it inside
    backward; these calls are then no-ops). Returns the gradient norm before clipping (a
    tensor, read on the host only when a step point is recorded), or None if unknown."""
    if config.training.deepspeed.enabled:
        norm = model.get_global_grad_norm()
        return None if norm is None else torch.as_tensor(norm, dtype=torch.float32)
    norm = accelerator.clip_grad_norm_(model.parameters(), config.training.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return None if norm is None else norm.detach().float()


def current_lr(optimizer: Any) -> float:
    return float(optimizer.param_groups[0]["lr"])


def batch_tokens(
    batch: dict[str, torch.Tensor], pad_id: int, context_length: int
) -> tuple[int, int]:
    """(non-padding tokens, contextLength slots) of a micro-batch: what packing fills."""
    input_ids = batch["input_ids"]
    return int((input_ids != pad_id).sum()), input_ids.shape[0] * context_length


def record_step(ctx: dict[str, Any], epoch: int, state: StageState, window: StepWindow) -> bool:
    """Sum the window over all workers (one collective, every rank at the same step) and
    append its point; False (nothing recorded) when the window held no completion token."""
    config: StageConfig = ctx["config"]
    sums = global_sum(ctx["accelerator"], torch.tensor(window.sums(), dtype=torch.float64))
    if not sums[WINDOW_FIELDS.index("useful_tokens")] > 0:
        return False
    numbers = step_point(sums.tolist(), window.learning_rate, time.monotonic() - window.started)
    state.steps.append(
        StepMetrics(stage=config.stage, epoch=epoch, step=state.step, **numbers).to_wire()
    )
    return True


@torch.no_grad()
def validation_loss(
    accelerator: Any, model: Any, config: StageConfig, rank: int, world_size: int, pad_id: int
) -> float:
    """Token-weighted mean loss over all workers' validation shards."""
    model.eval()
    t = config.training
    total = TokenLoss()
    for batch in worker_batches(
        config.validation,
        epoch=0,
        seed=t.seed,
        rank=rank,
        world_size=world_size,
        batch_size=t.batch_size_per_device,
        context_length=t.context_length,
        packing=t.packing,
        pad_id=pad_id,
        shuffle=False,
        block_mask=not packed_positions_supported(),
    ):
        logits = model(**model_inputs(batch, model, accelerator.device)).logits
        loss_sum, count = token_loss_sum(logits, batch["labels"].to(accelerator.device))
        total.add(float(loss_sum), int(count))
    model.train()
    return all_reduce_mean(accelerator, total)


def all_reduce_mean(accelerator: Any, local: TokenLoss) -> float:
    pair = global_sum(accelerator, torch.tensor([local.loss_sum, float(local.tokens)]))
    return TokenLoss(float(pair[0]), int(pair[1])).mean


# --------------------------------------------------------------------------- saving


def epoch_uri(config: StageConfig, epoch: int) -> str:
    return storage.join(stage_uri(config), f"epoch-{epoch:03d}")


def save_consolidated(
    accelerator: Any, model: Any, tokenizer: Any, config: StageConfig, base_path: str, uri: str
) -> None:
    """Gather the full weights (ZeRO-3: every rank takes part) and write an HF checkpoint with
    the tokenizer from rank 0, its commit marker last. LoRA runs save the adapter only (trained
    token rows included); the stage's best is merged once after training
    (`merge_lora_checkpoint`)."""
    if config.training.method == "lora":
        # Adapter weights and trained token rows, no copy of the embedding matrices (peft
        # would add the whole resized embedding and head, 0.5 GB for 7B, to every epoch).
        weights: dict[str, Any] = {"save_embedding_layers": False}
    else:
        weights = {"state_dict": accelerator.get_state_dict(model)}
    if not accelerator.is_main_process:
        return
    with storage.staging_dir("model-") as tmp:
        accelerator.unwrap_model(model).save_pretrained(tmp, **weights)
        tokenizer.save_pretrained(tmp)
        storage.upload_dir(Path(tmp), uri)
    durable.commit(uri, {"stage": config.stage, "kind": "checkpoint"})


def merge_lora_checkpoint(config: StageConfig, adapter_uri: str, out_uri: str) -> str:
    """Load the base in the training precision, apply the adapter (LoRA deltas and trained
    token rows), merge, and write a plain HF checkpoint: what evaluation and the next stage
    load. Runs once per stage, on the best epoch; returns `out_uri`."""
    from peft import PeftModel

    from kubetune_trainer.model import load_model, load_tokenizer, resize_for_tokenizer

    t = config.training
    with storage.staging_dir("merge-") as workdir:
        base_path, revision = materialize(config.model_source, Path(workdir))
        adapter = storage.download_dir(adapter_uri, Path(workdir, "adapter"))
        tokenizer = load_tokenizer(str(adapter))
        base = load_model(base_path, revision, load_dtype(t), t.attn_implementation)
        torch.manual_seed(t.seed)
        resize_for_tokenizer(base, tokenizer)
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        out = Path(workdir, "merged")
        merged.save_pretrained(out)
        tokenizer.save_pretrained(out)
        storage.upload_dir(out, out_uri)
    durable.commit(out_uri, {"stage": config.stage, "kind": "merged"})
    return out_uri


def retain_best(config: StageConfig, state: StageState, is_main: bool) -> None:
    """Delete checkpoints beyond the best `checkpointsToKeep` (rank 0 deletes)."""
    doomed = checkpoints_to_delete(state.checkpoint_records(), config.training.checkpoints_to_keep)
    if is_main:
        for record in doomed:
            storage.delete_dir(record.uri)
    doomed_uris = {r.uri for r in doomed}
    state.records = [r for r in state.records if r["uri"] not in doomed_uris]
    kept = {r["uri"] for r in state.records}
    for point in state.epochs:
        if point.get("checkpoint") not in kept:
            point.pop("checkpoint", None)


def save_resume_point(ctx: dict[str, Any], state: StageState, saved_by: ResumeSource) -> None:
    """A collective save to the job's storage: every rank uploads its part of the optimizer,
    scheduler and RNG state, rank 0 adds the stage's state; once all have uploaded, rank 0
    commits the point and deletes the older ones."""
    config, accelerator = ctx["config"], ctx["accelerator"]
    uri = durable.resume_point_uri(stage_uri(config), state.step, state.epoch, state.micro_step)
    if ctx.get("resume_point") == uri:
        return  # this very data position is committed already
    state.saved_by = saved_by
    with storage.staging_dir("resume-") as tmp:
        accelerator.save_state(tmp)
        if accelerator.is_main_process:
            Path(tmp, STATE_FILE).write_text(json.dumps(asdict(state)))
        storage.upload_into(Path(tmp), uri)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        durable.commit(uri, {"step": state.step, "epoch": state.epoch, "savedBy": saved_by})
        durable.prune_resume_points(stage_uri(config), keep=uri)
    accelerator.wait_for_everyone()
    ctx["resume_point"] = uri


def resume(accelerator: Any, config: StageConfig) -> tuple[StageState, str | None]:
    """The stage's latest committed resume point (a restarted worker group, or a new attempt
    on a fresh cluster), loaded into the engine; else a fresh state. Saves that never
    committed are deleted. Returns the state and the point's URI."""
    uri = durable.latest_resume_point(stage_uri(config))
    state = StageState()
    if uri is not None:
        folder = storage.download_once_per_node(uri)
        accelerator.load_state(str(folder))
        state = StageState(**json.loads((folder / STATE_FILE).read_text()))
        point = ResumePoint(
            stage=config.stage,
            epoch=state.epoch,
            step=state.step,
            saved_by=state.saved_by,
            time=now_rfc3339(),
        )
        state.resumes = [*state.resumes, point.to_wire()][-MAX_RESUMES:]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        durable.prune_resume_points(stage_uri(config), keep=uri)
    return state, uri


# --------------------------------------------------------------------------- progress


class Progress:
    """Rank 0 writes the running report (throttled) so the operator shows step and ETA."""

    def __init__(self, config: StageConfig, is_main: bool, total_steps: int):
        self.report = config.report.model_copy(deep=True)
        self.prior_epochs = list(self.report.epochs)
        self.prior_steps = list(self.report.steps)
        self.prior_resumes = [r for r in self.report.resumes if r.stage != config.stage]
        self.steps: list[StepMetrics] = []  # this stage's points, parsed once each
        self.report.phase, self.report.stage = "Training", config.stage
        self.report.stage_index = config.stage_index
        self.report.total_epochs, self.report.total_steps = stage_epochs(config), total_steps
        self.reporter = None
        if is_main and config.report_target:
            self.reporter = ThrottledReporter(
                reporter_from_target(config.report_target, config.report_namespace),
                config.report_interval_s,
            )
        self.started = time.monotonic()
        self.start_step: int | None = None

    def update(self, state: StageState, epoch: int, force: bool = False) -> None:
        if self.start_step is None:
            self.start_step = state.step
        r = self.report
        r.epoch, r.step = epoch, state.step
        # Every call is a finished optimizer step (or epoch): the operator's stall clock.
        beat(r, f"optimizer step {state.step}/{r.total_steps}")
        r.eta_seconds = eta_seconds(
            time.monotonic() - self.started,
            state.step - self.start_step,
            r.total_steps - self.start_step,
        )
        r.epochs = self.prior_epochs + [EpochMetrics.model_validate(e) for e in state.epochs]
        self.steps += [StepMetrics.model_validate(s) for s in state.steps[len(self.steps) :]]
        r.steps = downsample(self.prior_steps + self.steps)
        resumes = [ResumePoint.model_validate(p) for p in state.resumes]
        r.resumes = (self.prior_resumes + resumes)[-MAX_RESUMES:]
        best = select_best_checkpoint(state.checkpoint_records())
        if best is not None:
            r.best_checkpoint = BestCheckpoint(
                uri=best.uri,
                stage=best.stage,
                epoch=best.epoch,
                validation_perplexity=best.validation_perplexity,
            )
        if self.reporter is not None:
            self.reporter.write(r, force=force)

    def close(self) -> None:
        """The stage's last progress goes out before the driver's next word (bounded: an
        API outage must not hold the stage's end)."""
        if self.reporter is not None:
            self.reporter.flush(PROGRESS_FLUSH_S)
            self.reporter.close()


# --------------------------------------------------------------------------- main


def run_epoch(ctx: dict[str, Any], epoch: int, state: StageState) -> float:
    """One pass over this worker's shard; returns the global token-weighted train loss."""
    config: StageConfig = ctx["config"]
    t = config.training
    batches = worker_batches(
        config.train,
        epoch=epoch,
        seed=t.seed,
        rank=ctx["rank"],
        world_size=ctx["world"],
        batch_size=t.batch_size_per_device,
        context_length=t.context_length,
        packing=t.packing,
        pad_id=ctx["pad_id"],
        accumulation=t.gradient_accumulation_steps,
        block_mask=not packed_positions_supported(),
    )
    return train_batches(ctx, epoch, state, batches)


def train_batches(
    ctx: dict[str, Any], epoch: int, state: StageState, batches: WorkerBatches
) -> float:
    """Micro-steps with token-weighted accumulation windows, an optimizer step at each window's
    end, step points every `logEverySteps`; returns the global token-weighted train loss. A
    resumed epoch starts at its saved data position; a preemption notice seen by any worker
    at a window's start becomes a save of that step by all (`stop_for_preemption`)."""
    config: StageConfig = ctx["config"]
    t = config.training
    accelerator, model = ctx["accelerator"], ctx["model"]
    accumulation = t.gradient_accumulation_steps
    counts = batches.label_counts()
    # A device tensor once the first micro-step ran (no sync per step); what the epoch's
    # earlier micro-steps summed (all workers) is counted once, by rank 0.
    loss_total: Any = state.epoch_loss_sum if accelerator.is_main_process else 0.0
    window = StepWindow(started=time.monotonic())
    scale, lr, data = torch.ones(()), 0.0, []
    model.train()
    for index in range(state.micro_step + 1, len(batches) + 1):
        ctx["fault"].maybe_fire(epoch, index)
        batch = batches[index - 1]
        tokens, slots = batch_tokens(batch, ctx["pad_id"], t.context_length)
        if (index - 1) % accumulation == 0:
            notice = ctx["notice"].requested()
            scale, stop = window_scale(
                accelerator, counts, index - 1, accumulation, ctx["world"], notice
            )
            if stop:
                stop_for_preemption(ctx, epoch, state, index - 1, loss_total, window)
            # Read before the window: DeepSpeed steps optimizer and schedule inside backward.
            lr = current_lr(ctx["optimizer"])
        if ctx["fault"].step_log is not None:
            data.append(int(batch["input_ids"].sum()))
        with accelerator.accumulate(model):
            loss_sum = train_micro_step(accelerator, model, batch, scale)
            loss_total = loss_total + loss_sum
            window.add_batch(loss_sum, counts[index - 1], tokens, slots)
            if index % accumulation == 0:
                norm = optimizer_step(
                    accelerator, model, ctx["optimizer"], ctx["scheduler"], config
                )
                window.add_step(lr, norm)
                state.step += 1
                ctx["fault"].log_step(epoch, state.step, data)
                data = []
                if (state.step % t.log_every_steps == 0 or index == len(batches)) and record_step(
                    ctx, epoch, state, window
                ):
                    window = StepWindow(started=time.monotonic())
                ctx["progress"].update(state, epoch)
    return all_reduce_mean(accelerator, TokenLoss(float(loss_total), sum(counts)))


def stop_for_preemption(
    ctx: dict[str, Any],
    epoch: int,
    state: StageState,
    done: int,
    loss_total: Any,
    window: StepWindow,
) -> NoReturn:
    """Save this step boundary (every rank, collectively) with the data position and the
    epoch's loss so far, tell the preStop hook, and stop."""
    last_point = state.steps[-1]["step"] if state.steps else 0
    if state.step > last_point:  # the same on every rank: record_step is a collective
        record_step(ctx, epoch, state, window)  # the steps since the last point
    state.micro_step = done
    state.epoch_loss_sum = float(global_sum(ctx["accelerator"], torch.as_tensor(loss_total)))
    save_resume_point(ctx, state, "Preemption")
    ctx["notice"].saved()
    raise Preempted(
        f"preempted: saved stage {ctx['config'].stage} at step {state.step} "
        f"(epoch {epoch}, micro-batch {done})"
    )


def finish_epoch(ctx: dict[str, Any], epoch: int, state: StageState, train_loss: float) -> None:
    """Validate; write the consolidated model only if the epoch can be among the kept best;
    record the epoch; save the resume point of the epoch's end."""
    import ray.train

    config: StageConfig = ctx["config"]
    accelerator = ctx["accelerator"]
    val_loss = validation_loss(
        accelerator, ctx["model"], config, ctx["rank"], ctx["world"], ctx["pad_id"]
    )
    ppl = perplexity(val_loss)
    record = CheckpointRecord(config.stage, epoch, epoch_uri(config, epoch), ppl)
    # Every rank decides alike (the perplexity is all-reduced): the gather is a collective.
    kept = can_be_kept(state.checkpoint_records(), record, config.training.checkpoints_to_keep)
    if kept:
        save_consolidated(
            accelerator, ctx["model"], ctx["tokenizer"], config, ctx["base_path"], record.uri
        )
        state.records.append(asdict(record))
    state.epoch, state.micro_step, state.epoch_loss_sum = epoch, 0, 0.0
    state.epochs.append(
        EpochMetrics(
            stage=config.stage,
            epoch=epoch,
            step=state.step,
            train_loss=train_loss,
            validation_loss=val_loss,
            validation_perplexity=ppl,
            checkpoint=record.uri if kept else None,
        ).to_wire()
    )
    retain_best(config, state, accelerator.is_main_process)
    if accelerator.is_main_process:
        steps = "".join(json.dumps(point) + "\n" for point in state.steps)
        storage.write_text(storage.join(stage_uri(config), STEPS_FILE), steps)
    early = config.training.early_stopping
    state.stopped_early = early is not None and should_stop_early(
        [e["validationPerplexity"] for e in state.epochs], early.patience, early.min_delta
    )
    ctx["progress"].update(state, epoch, force=True)
    save_resume_point(ctx, state, "EpochEnd")
    ray.train.report(
        {
            "epoch": epoch,
            "train_loss": train_loss,
            "validation_loss": val_loss,
            "validation_perplexity": ppl,
        }
    )


def train_stage(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point: resume from the stage's latest durable point, train the rest,
    record the finished stage in storage (what the driver reads back)."""
    import ray.train

    from kubetune_trainer.model import load_tokenizer

    config: StageConfig = loop_config["stage"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    total_steps = stage_steps(config, world)
    accelerator = make_accelerator(config, world)
    fault = FaultInjector(config.fault, rank)
    with storage.staging_dir("stage-") as workdir, PreemptionNotice(fault.scratch) as notice:
        tokenizer = load_tokenizer(str(write_files(config.tokenizer_files, Path(workdir, "tok"))))
        model, base_path, _ = load_stage_model(config, Path(workdir), tokenizer)
        optimizer, scheduler = make_optimizer(model, config, total_steps)
        if config.training.deepspeed.enabled:
            model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
            require_deepspeed_engine(model)
        else:
            model, optimizer = accelerator.prepare(model, optimizer)
            accelerator.register_for_checkpointing(scheduler)
        state, point = resume(accelerator, config)
        ctx = {
            "config": config,
            "accelerator": accelerator,
            "model": model,
            "rank": rank,
            "world": world,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "tokenizer": tokenizer,
            "pad_id": tokenizer.pad_token_id,
            "base_path": base_path,
            "fault": fault,
            "notice": notice,
            "resume_point": point,
            "progress": Progress(config, accelerator.is_main_process, total_steps),
        }
        epoch = state.epoch
        try:
            while epoch < stage_epochs(config) and not state.stopped_early:
                epoch += 1
                train_loss = run_epoch(ctx, epoch, state)
                finish_epoch(ctx, epoch, state, train_loss)
        finally:
            ctx["progress"].close()
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            durable.finish_stage(stage_uri(config), asdict(state))
