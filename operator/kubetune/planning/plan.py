"""The plan of a FineTuneJob: what each phase needs, what the pods have, a verdict naming the
binding constraint and its margin, a remedy when it does not fit, and time and cost when the
data's size is known. Pure: `kubetune plan`, `kubetune validate` and the operator call it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from kubetune.api.instance_types import (
    INSTANCE_TYPES,
    PRICES_AS_OF,
    PRICES_REGION,
    lookup_instance_type,
)
from kubetune.api.v1alpha1 import FineTuneJobSpec, stage_training, stages_of
from kubetune.builders.rayjob import pod_resources, worker_layout
from kubetune.config import OperatorConfig
from kubetune.planning.memory import (
    GIB,
    Layout,
    PhaseNeeds,
    checkpoint_needs,
    generation_needs,
    handoff_needs,
    resume_state_total,
    saved_model_bytes,
    training_needs,
)
from kubetune.planning.shapes import ModelShape

Verdict = Literal["Fits", "WillNotFit", "Unknown"]
# Llama-2's context: a few-shot baseline prompt is cut to it.
MAX_PROMPT_TOKENS = 4096
# Model FLOPs utilisation assumed for the time estimate: a mid value of what ZeRO-3 reaches on
# PCIe GPUs; bench/gpu_check.sh measures it on the GPU at hand.
ASSUMED_MFU = 0.35
# DeepSpeed's CPU Adam, parameters updated per second per node (ZeRO-Offload, Ren et al. 2021,
# Table 3: ~1B parameters in ~0.2 s on a 2-socket host); an assumption, stated.
CPU_ADAM_PARAMS_PER_S = 5e9
PACKING_FILL = 0.98  # measured on GSM8k at 512 (bench/bench_packing.py)
# Unpacked batches pad every row to the longest of its batch: a stated guess of the share of
# computed positions that are real tokens.
UNPACKED_FILL = 0.6
# Decoding reads every weight once per generated token; the share of the memory bandwidth it
# reaches is a stated guess.
DECODE_BANDWIDTH_SHARE = 0.6
START_SECONDS = 600  # pods, image pull, model download: a stated guess


@dataclass(frozen=True)
class DataSize:
    """Training rows and mean tokens per formatted example, per stage (from local files)."""

    rows: int
    mean_tokens: float
    test_rows: int | None = None


@dataclass
class Check:
    phase: str
    resource: str
    needs: int
    has: int | None

    @property
    def margin(self) -> float | None:
        return None if self.has is None else (self.has - self.needs) / self.has

    def sentence(self) -> str:
        has = "unknown" if self.has is None else f"{gib(self.has)} GiB"
        return f"{self.phase}: {self.resource}: needs {gib(self.needs)} GiB, {has} available"


@dataclass
class Plan:
    model_parameters: int
    nodes: int
    gpus: int
    phases: list[PhaseNeeds]
    checks: list[Check]
    verdict: Verdict
    reason: str
    remedy: str | None = None
    storage_per_checkpoint: int = 0
    storage_total: int = 0
    hours: float | None = None
    cost_usd: float | None = None
    price_note: str | None = None
    notes: list[str] = field(default_factory=list)


def gib(n: float) -> str:
    return f"{n / GIB:,.1f}"


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (the subset the API allows) in bytes."""
    units = {
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    number = quantity.rstrip("kMGTi")
    suffix = quantity[len(number) :]
    if suffix == "m":
        return int(float(number) / 1000)
    return int(float(number) * units.get(suffix, 1))


def device_limit(spec: FineTuneJobSpec) -> int | None:
    """Memory of one device: a GPU's usable memory, or a CPU worker pod's memory."""
    pool = spec.compute.node_pool
    if pool.cpu_only:
        return quantity_bytes(pool.memory) if pool.memory else None
    known = lookup_instance_type(pool.instance_type)
    return int(known.gpu.usable_gib * GIB) if known else None


def host_limit(spec: FineTuneJobSpec, config: OperatorConfig) -> int | None:
    """Memory of the worker pods on one node (what the pods are limited to, not the node)."""
    _, gpus = worker_layout(spec)  # one worker pod per node (per worker on a CPU pool)
    memory = pod_resources(spec, gpus, config).get("limits", {}).get("memory")
    return quantity_bytes(memory) if memory else None


def phases_of(spec: FineTuneJobSpec, shape: ModelShape, limit: int) -> list[PhaseNeeds]:
    layout = Layout.of(spec)
    training = training_needs(spec, shape, layout)
    phases = [training, checkpoint_needs(spec, shape, layout, training)]
    if len(stages_of(spec)) > 1:
        phases.append(handoff_needs(spec, shape))
    if spec.evaluation.enabled:
        context = spec.training.context_length
        phases.append(generation_needs("evaluation", spec, shape, context, limit, layout.per_node))
        if spec.evaluation.baseline:
            prompt = min(MAX_PROMPT_TOKENS, (spec.evaluation.few_shot_examples + 1) * context)
            phases.append(generation_needs("baseline", spec, shape, prompt, limit, layout.per_node))
    return phases


def checks_of(phases: list[PhaseNeeds], device: int | None, host: int | None) -> list[Check]:
    checks = []
    for phase in phases:
        if phase.device.items:
            what = "memory per device" + (
                f" ({phase.devices} devices)" if phase.devices > 1 else ""
            )
            checks.append(Check(phase.name, what, phase.device.total, device))
        if phase.host.items:
            checks.append(Check(phase.name, "host memory per node", phase.host.total, host))
    return checks


def judge(checks: list[Check]) -> tuple[Verdict, str]:
    known = [c for c in checks if c.margin is not None]
    if not known:
        return "Unknown", "the pods' memory is unknown (an instance type kubetune does not know)"
    binding = min(known, key=lambda c: c.margin or 0.0)
    verdict: Verdict = "Fits" if (binding.margin or 0.0) >= 0 else "WillNotFit"
    return verdict, f"binding: {binding.sentence()} (margin {binding.margin:.0%})"


def build_plan(
    spec: FineTuneJobSpec,
    shape: ModelShape | None,
    config: OperatorConfig,
    data: list[DataSize] | None = None,
    price_per_hour: float | None = None,
    with_remedy: bool = True,
) -> Plan | None:
    """The plan, or None when the model's shape is unknown."""
    if shape is None:
        return None
    device, host = device_limit(spec), host_limit(spec, config)
    phases = phases_of(spec, shape, device or 0)
    checks = checks_of(phases, device, host)
    verdict, reason = judge(checks)
    layout = Layout.of(spec)
    gpus = 0 if spec.compute.node_pool.cpu_only else spec.compute.workers
    per_checkpoint = saved_model_bytes(spec, shape) + resume_state_total(spec, shape)
    plan = Plan(
        model_parameters=shape.parameters,
        nodes=layout.nodes,
        gpus=gpus,
        phases=phases,
        checks=checks,
        verdict=verdict,
        reason=reason,
        storage_per_checkpoint=per_checkpoint,
        storage_total=per_checkpoint
        * (spec.training.checkpoints_to_keep + 1)
        * len(stages_of(spec)),
    )
    add_time_and_cost(plan, spec, shape, data, price_per_hour)
    if with_remedy and verdict == "WillNotFit":
        plan.remedy = remedy(spec, shape, config)
    return plan


SKIP_FIT_CHECK_HINT = "spec.runPolicy.skipFitCheck: true runs it anyway"
# Scratch over the planned disk need: tokenizer and index files, Ray Train's checkpoint
# metadata, and what the estimate leaves out; an emptyDir over its sizeLimit is evicted.
SCRATCH_HEADROOM = 1.25


def scratch_gib(plan: Plan | None) -> int | None:
    """Node-local scratch per worker pod, whole GiB: the largest phase's disk need with
    headroom, at least 1; None when the model's size is unknown."""
    if plan is None:
        return None
    need = max(p.disk.total for p in plan.phases)
    return max(1, math.ceil(need * SCRATCH_HEADROOM / GIB))


def refused_for_fit(verdict: str, spec: FineTuneJobSpec) -> bool:
    """A job whose plan says WillNotFit is not started, unless its spec says to run it anyway
    (the one rule `kubetune validate` and the operator both apply)."""
    return verdict == "WillNotFit" and not spec.run_policy.skip_fit_check


def generation_devices(spec: FineTuneJobSpec, shape: ModelShape | None) -> dict[str, int]:
    """GPUs one evaluation / baseline replica spans (layers split over them): the fewest of a
    node's GPUs the plan fits it on; 1 when the model's size is unknown."""
    if shape is None:
        return {"evaluation": 1, "baseline": 1}
    phases = phases_of(spec, shape, device_limit(spec) or 0)
    found = {p.name: p.devices for p in phases if p.name in ("evaluation", "baseline")}
    return {"evaluation": found.get("evaluation", 1), "baseline": found.get("baseline", 1)}


# --------------------------------------------------------------------------- remedies


def _variants(spec: FineTuneJobSpec) -> list[tuple[str, dict[str, Any]]]:
    """Single changes to try, cheapest first: (what to tell the user, the spec patch)."""
    training, ds = spec.training, spec.training.deepspeed
    out: list[tuple[str, dict[str, Any]]] = []
    if not training.gradient_checkpointing:
        out.append(
            (
                "set training.gradientCheckpointing: true",
                {"training": {"gradientCheckpointing": True}},
            )
        )
    if ds.enabled and not ds.offload_optimizer:
        out.append(
            (
                "set training.deepspeed.offloadOptimizer: true",
                {"training": {"deepspeed": {"offloadOptimizer": True}}},
            )
        )
    if ds.enabled and ds.stage < 3 and training.method == "full":
        out.append(("set training.deepspeed.stage: 3", {"training": {"deepspeed": {"stage": 3}}}))
    if ds.enabled and ds.stage == 3 and not ds.offload_parameters:
        out.append(
            (
                "set training.deepspeed.offloadParameters: true",
                {"training": {"deepspeed": {"offloadParameters": True, "offloadOptimizer": True}}},
            )
        )
    batch = training.batch_size_per_device
    while batch > 1:
        batch //= 2
        accumulation = (
            training.gradient_accumulation_steps * training.batch_size_per_device // batch
        )
        out.append(
            (
                f"set training.batchSizePerDevice: {batch} and gradientAccumulationSteps: "
                f"{accumulation} (same global batch)",
                {
                    "training": {
                        "batchSizePerDevice": batch,
                        "gradientAccumulationSteps": accumulation,
                    }
                },
            )
        )
    eval_batch = spec.evaluation.batch_size
    while eval_batch > 1:
        eval_batch //= 2
        out.append(
            (f"set evaluation.batchSize: {eval_batch}", {"evaluation": {"batchSize": eval_batch}})
        )
    per_node = max(1, spec.compute.node_pool.effective_gpus_per_node or 1)
    for nodes in (2, 4, 8):
        workers = max(spec.compute.workers, per_node) * nodes
        if workers <= 4096:
            out.append((f"set compute.workers: {workers}", {"compute": {"workers": workers}}))
    for name, known in sorted(
        INSTANCE_TYPES.items(), key=lambda kv: (kv[1].gpu.usable_gib, kv[1].memory_gib)
    ):
        if (
            known.gpus >= min(spec.compute.workers, 8)
            and name != spec.compute.node_pool.instance_type
        ):
            out.append(
                (
                    f"set compute.nodePool.instanceType: {name}",
                    {"compute": {"nodePool": {"instanceType": name}}},
                )
            )
    if training.method == "full":
        lora: dict[str, Any] = {"method": "lora"}
        if ds.enabled and ds.stage == 3:
            lora["deepspeed"] = {"stage": 2, "offloadParameters": False}
        out.append(
            (
                "use training.method: lora" + (" with ZeRO stage 2" if "deepspeed" in lora else ""),
                {"training": lora},
            )
        )
    return out


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def remedy(spec: FineTuneJobSpec, shape: ModelShape, config: OperatorConfig) -> str:
    wire = spec.model_dump(by_alias=True, exclude_none=True)
    for advice, patch in _variants(spec):
        try:
            changed = FineTuneJobSpec.model_validate(_merge(wire, patch))
        except ValueError:
            continue
        plan = build_plan(changed, shape, config, with_remedy=False)
        if plan is not None and plan.verdict == "Fits":
            return f"{advice} ({plan.reason})"
    return "no single change found: fewer parameters (a smaller model or LoRA) on more nodes"


# --------------------------------------------------------------------------- time and cost


def add_time_and_cost(
    plan: Plan,
    spec: FineTuneJobSpec,
    shape: ModelShape,
    data: list[DataSize] | None,
    price_per_hour: float | None,
) -> None:
    known = lookup_instance_type(spec.compute.node_pool.instance_type)
    if data is None or known is None or spec.compute.node_pool.cpu_only:
        plan.notes.append("time and cost: need the data's size and a known GPU instance type")
        return
    training = spec.training
    peak = known.gpu.bf16_tflops * 1e12 * ASSUMED_MFU * spec.compute.workers
    passes = 3 if training.method == "full" else 2  # LoRA computes no weight gradients
    passes += 1 if training.gradient_checkpointing else 0
    seconds = float(START_SECONDS)
    for stage, size in zip(stages_of(spec), data, strict=False):
        epochs = stage_training(spec, stage).epochs
        computed = (
            size.rows * size.mean_tokens / (PACKING_FILL if training.packing else UNPACKED_FILL)
        )
        flops = 2 * shape.parameters * passes * computed
        global_batch = (
            training.batch_size_per_device
            * training.gradient_accumulation_steps
            * spec.compute.workers
        )
        steps = math.ceil(computed / training.context_length / global_batch)
        adam = 0.0
        if training.deepspeed.enabled and training.deepspeed.offload_optimizer:
            adam = steps * shape.parameters / plan.nodes / CPU_ADAM_PARAMS_PER_S
        seconds += epochs * (flops / peak + adam)
        rows = spec.evaluation.max_samples or size.test_rows or 0
        if spec.evaluation.enabled and rows:
            width = 2 * shape.parameters
            step = width / (known.gpu.memory_gbps * 1e9 * DECODE_BANDWIDTH_SHARE)
            runs = 2 if spec.evaluation.baseline else 1
            seconds += (
                runs
                * math.ceil(rows / spec.evaluation.batch_size)
                * spec.evaluation.max_new_tokens
                * step
            )
    plan.hours = seconds / 3600
    price = price_per_hour if price_per_hour is not None else known.price_per_hour
    if price is not None:
        plan.cost_usd = plan.hours * plan.nodes * price
        plan.price_note = f"{price:g} USD/h per node" + (
            "" if price_per_hour is not None else f" (on-demand, {PRICES_REGION}, {PRICES_AS_OF})"
        )
    plan.notes.append(
        f"time assumes {ASSUMED_MFU:.0%} of the GPUs' bf16 peak, {START_SECONDS // 60} min to start"
    )
