"""Memory and disk a FineTuneJob needs, per phase, from its spec and its model's shape. Pure.

Every figure is bytes, itemised, so a verdict can say what it is made of. The constants below
are the planner's assumptions; each says where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubetune.api.v1alpha1 import FineTuneJobSpec, LoraSpec, TrainingSpec
from kubetune.planning.shapes import ModelShape
from kubetune.planning.zero import ModelStates, zero2_model_states, zero3_model_states

GIB = 2**30
# Per GPU: CUDA context, cuBLAS/NCCL workspaces and the caching allocator's fragmentation.
# CUDA contexts take 0.3-0.6 GiB, NCCL's buffers about as much again; a round, stated guess.
DEVICE_RESERVE = int(1.5 * GIB)
RESERVE = "reserve (CUDA context, NCCL, fragmentation)"
# DeepSpeed's communication buckets, its defaults (the config sets neither): reduce_bucket_size
# 5e8 elements of 16-bit gradients (stages 2 and 3) and stage3_prefetch_bucket_size 5e7.
REDUCE_BUCKET = 2 * 500_000_000
PREFETCH_BUCKET = 2 * 50_000_000
# Activations of one decoder layer in 16-bit, per token: 34 x hidden bytes, plus 5 x heads x
# sequence bytes for eager attention's score matrices (Korthikanti et al. 2022, "Reducing
# Activation Recomputation in Large Transformer Models", eq. 1; fused sdpa/flash kernels keep
# no score matrix). Gradient checkpointing keeps each layer's input and recomputes one layer.
ACTIVATION_BYTES_PER_HIDDEN = 34
EAGER_SCORE_BYTES_PER_HEAD = 5
# Logits in the compute dtype, their fp32 copy for the loss, and its gradient (tokenization.
# token_loss_sum upcasts before cross-entropy).
LOSS_FP32_BYTES = 8
# Host memory of one training worker process beside model states: torch, the Ray worker,
# tokenizer and the epoch's token ids; GPU processes also map the CUDA and NCCL libraries.
# Stated guesses: 4 GiB on a GPU node, 1.5 GiB for a CPU-only worker pod.
WORKER_PROCESS_HOST = 4 * GIB
CPU_WORKER_PROCESS = int(1.5 * GIB)
# Resume state (accelerator.save_state) per parameter: mixed precision with DeepSpeed keeps
# 16-bit weights (2) and fp32 master weights and Adam moments (12); DDP in fp32 keeps the
# weights (4) and the moments (8).
RESUME_BYTES_DEEPSPEED = 14
RESUME_BYTES_DDP = 12
# Adam on trainable parameters in fp32: weights, gradients, two moments.
ADAM_FP32_BYTES = 16


def device_reserve(spec: FineTuneJobSpec) -> int:
    return 0 if spec.compute.node_pool.cpu_only else DEVICE_RESERVE


def compute_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


@dataclass(frozen=True)
class Layout:
    """Where the workers are: `nodes` nodes of up to `per_node` workers each."""

    workers: int
    per_node: int

    @property
    def nodes(self) -> int:
        return -(-self.workers // self.per_node)

    @classmethod
    def of(cls, spec: FineTuneJobSpec) -> Layout:
        pool = spec.compute.node_pool
        per_node = 1 if pool.cpu_only else max(1, pool.effective_gpus_per_node)
        return cls(spec.compute.workers, min(per_node, spec.compute.workers))


@dataclass
class Need:
    """Bytes of one resource, itemised in the order they were added."""

    items: dict[str, int] = field(default_factory=dict)

    def add(self, what: str, amount: float) -> Need:
        if amount > 0:
            self.items[what] = self.items.get(what, 0) + int(amount)
        return self

    @property
    def total(self) -> int:
        return sum(self.items.values())


@dataclass
class PhaseNeeds:
    """One phase of a run: per device (a GPU, or a CPU worker pod's memory), per node's host
    memory, and per node's local disk; `devices` is how many devices one copy spans."""

    name: str
    device: Need
    host: Need
    disk: Need
    devices: int = 1


def model_states(training: TrainingSpec, shape: ModelShape, layout: Layout) -> ModelStates:
    """Model states per device and per node's host for full fine-tuning."""
    params = shape.parameters
    ds = training.deepspeed
    if not ds.enabled:  # DDP: fp32 weights and gradients, Adam's moments, on every device
        return ModelStates(0, ADAM_FP32_BYTES * params)
    if ds.stage == 3:
        return zero3_model_states(
            params,
            shape.largest_module_params,
            layout.per_node,
            layout.nodes,
            offload_optimizer=ds.offload_optimizer or ds.offload_parameters,
            offload_parameters=ds.offload_parameters,
        )
    states = zero2_model_states(params, layout.per_node, layout.nodes, ds.offload_optimizer)
    if ds.stage == 1:  # stage 1 also keeps whole 16-bit gradients on every device
        return ModelStates(states.host_per_node, states.gpu_per_device + 2 * params)
    return states


def adapter_params(training: TrainingSpec, shape: ModelShape) -> int:
    """LoRA adapter parameters with the settings the trainer uses (LoraSpec's defaults when
    training.lora is unset)."""
    lora = training.lora or LoraSpec()
    return shape.lora_params(lora.rank, lora.target_modules)


def activations(training: TrainingSpec, shape: ModelShape) -> int:
    batch, seq = training.batch_size_per_device, training.context_length
    scale = compute_bytes(training.precision) / 2
    per_layer = seq * batch * ACTIVATION_BYTES_PER_HIDDEN * shape.hidden * scale
    if training.attn_implementation == "eager":
        per_layer += EAGER_SCORE_BYTES_PER_HEAD * shape.heads * seq * seq * batch * scale
    if training.gradient_checkpointing:
        kept = shape.layers * seq * batch * shape.hidden * compute_bytes(training.precision)
        return int(kept + per_layer)
    return int(shape.layers * per_layer)


def loss_buffers(training: TrainingSpec, shape: ModelShape) -> int:
    tokens = training.batch_size_per_device * training.context_length
    return tokens * shape.vocab * (compute_bytes(training.precision) + LOSS_FP32_BYTES)


def training_needs(spec: FineTuneJobSpec, shape: ModelShape, layout: Layout) -> PhaseNeeds:
    training = spec.training
    device, host = Need(), Need()
    if training.method == "lora":
        device.add("frozen base weights", shape.parameters * compute_bytes(training.precision))
        device.add(
            "adapters and their Adam states", ADAM_FP32_BYTES * adapter_params(training, shape)
        )
    else:
        states = model_states(training, shape, layout)
        device.add("model states (DeepSpeed estimate)", states.gpu_per_device)
        host.add("offloaded model states (DeepSpeed estimate)", states.host_per_node)
    device.add("activations", activations(training, shape))
    device.add("logits and loss", loss_buffers(training, shape))
    if training.deepspeed.enabled and training.deepspeed.stage >= 2:
        device.add("DeepSpeed buckets", REDUCE_BUCKET)
        if training.deepspeed.stage == 3:
            device.add("DeepSpeed buckets", PREFETCH_BUCKET)
    device.add(RESERVE, device_reserve(spec))
    if spec.compute.node_pool.cpu_only:  # the pod is the device: one process, one memory
        device.add("worker process", CPU_WORKER_PROCESS)
    else:
        host.add("worker processes", WORKER_PROCESS_HOST * layout.per_node)
    disk = Need().add("base model download (once per pod)", 2 * shape.parameters)
    return PhaseNeeds("training", device, host, disk)


def resume_state_total(spec: FineTuneJobSpec, shape: ModelShape) -> int:
    training = spec.training
    if training.method == "lora":
        return ADAM_FP32_BYTES * adapter_params(training, shape)
    per_param = RESUME_BYTES_DEEPSPEED if training.deepspeed.enabled else RESUME_BYTES_DDP
    return per_param * shape.parameters


def saved_model_bytes(spec: FineTuneJobSpec, shape: ModelShape) -> int:
    """What one epoch's checkpoint holds: the 16-bit model (fp32 when training in fp32), or
    a LoRA run's adapter."""
    if spec.training.method == "lora":
        return resume_state_total(spec, shape) // 4  # the fp32 adapter weights alone
    return shape.parameters * compute_bytes(spec.training.precision)


def checkpoint_needs(
    spec: FineTuneJobSpec, shape: ModelShape, layout: Layout, training: PhaseNeeds
) -> PhaseNeeds:
    """An epoch's save: rank 0 gathers the whole model into host memory and writes it, every
    rank writes its share of the resume state; both staged on node-local disk, then uploaded."""
    model = saved_model_bytes(spec, shape)
    host = Need(dict(training.host.items))
    if spec.compute.node_pool.cpu_only:
        device = Need(dict(training.device.items)).add("gathered model (rank 0)", model)
    else:
        device = Need(dict(training.device.items))
        host.add("gathered model on rank 0's node", model)
    disk = Need(dict(training.disk.items))
    disk.add(
        "resume state of this node's ranks",
        resume_state_total(spec, shape) * layout.per_node / layout.workers,
    )
    disk.add("saved model (rank 0's node)", model)
    return PhaseNeeds("checkpoint", device, host, disk)


def handoff_needs(spec: FineTuneJobSpec, shape: ModelShape) -> PhaseNeeds:
    """A curriculum stage starting from the previous stage's best: one copy per node, shared
    by its workers (`storage.download_once_per_node`)."""
    copy = shape.parameters * compute_bytes(spec.training.precision)
    disk = Need().add("previous best, one copy per node", copy)
    return PhaseNeeds("hand-off", Need(), Need(), disk)


def generation_needs(
    name: str,
    spec: FineTuneJobSpec,
    shape: ModelShape,
    prompt_tokens: int,
    limit: int,
    per_node: int,
) -> PhaseNeeds:
    """Greedy generation with one model replica in 16-bit (fp32 on CPU pools), split by layers
    over the fewest of a node's devices it fits on (`devices`)."""
    evaluation = spec.evaluation
    width = 4 if spec.compute.node_pool.cpu_only else 2
    batch, tokens = evaluation.batch_size, prompt_tokens + evaluation.max_new_tokens
    weights = shape.parameters * width
    cache = batch * tokens * shape.layers * 2 * shape.kv_width * width
    working = batch * prompt_tokens * (4 * shape.hidden + 3 * shape.intermediate) * width
    working += batch * shape.vocab * 4  # the last position's logits, fp32
    for devices in range(1, per_node + 1):
        device = Need().add("model weights", weights / devices).add("KV cache", cache / devices)
        device.add("prefill working set", working).add(RESERVE, device_reserve(spec))
        if device.total <= limit:
            break
    disk = Need().add("checkpoint download", weights)
    host = Need() if spec.compute.node_pool.cpu_only else Need().add("loading", weights / devices)
    if spec.compute.node_pool.cpu_only:
        device.add("worker process", CPU_WORKER_PROCESS)
    return PhaseNeeds(name, device, host, disk, devices)
