"""FineTuneJob v1alpha1: the single source of truth for the API.

The CRD's openAPIV3Schema is generated from these models (`kubetune manifests`), the
operator parses resources with them, and the trainer reads its configuration from them.
Defaults follow the Anyscale Llama-2 case study (10 epochs, lr 5e-6, batch 16 per device,
context 512, bf16, DeepSpeed ZeRO-3 with optimizer offload, keep the best checkpoint).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic.alias_generators import to_snake

from kubetune.api.base import KubeModel, Rule, immutable, nested
from kubetune.api.credentials import (
    CREDENTIALS_MESSAGE,
    EMBEDDED_CREDENTIALS,
    has_embedded_credentials,
)
from kubetune.api.instance_types import INSTANCE_TYPES, lookup_instance_type
from kubetune.api.tasks import (
    SCORERS,
    ScorerKind,
    TaskPreset,
    preset_description,
    scorer_description,
    scoring_tasks,
)

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ("ftj",)
CATEGORIES = ("kubetune",)

# Bounds keep CEL cost estimates finite and catch absurd values early.
SHORT = 253
LONG = 4096
TEMPLATE = 16384
# Longest message in status (conditions and .message); longer text is cut with a marker.
MESSAGE_LIMIT = 32768
METRICS_LIMIT = 64
# Points of the per-step curve kept in the report and the status (objects have size limits).
STEP_POINTS = 200

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
# Local path (no scheme), file://, s3://, gs://, hf:// (datasets hub), pvc://claim/path.
DATA_URI = r"^((file|s3|gs|hf|pvc)://.+|[^:]+)$"
STORAGE_URI = r"^((file|s3|gs|pvc)://.+|[^:]+)$"
DATA_URI_MEANING = (
    "unsupported URI: use a path, file://, s3://, gs://, pvc://claim/path or hf://dataset"
)
STORAGE_URI_MEANING = (
    "unsupported URI: use s3://, gs://, pvc://claim/path (or a local path for kubetune run)"
)
NO_WHITESPACE = r"^[^\s]+$"
RAY_VERSION = r"^[0-9]+\.[0-9]+\.[0-9]+$"
# An image reference (registry/repository:tag@digest): no spaces, quotes or shell syntax.
IMAGE_REFERENCE = r"^[a-zA-Z0-9][a-zA-Z0-9._/:@-]*$"
# A `..` segment after a scheme (local paths of `kubetune run` are the user's own to choose).
PARENT_SEGMENT = r"^[a-zA-Z][a-zA-Z0-9+.-]*://(.*/)?\.\.(/|$)"
MIN_RAY_MINOR = 52  # Ray 2.52: token authentication (RAY_AUTH_MODE=token)
DURABLE_SCHEMES = ("s3://", "gs://", "pvc://")

Precision = Literal["bf16", "fp16", "fp32"]
Method = Literal["full", "lora"]
Scheduler = Literal["linear", "cosine", "constant"]
AttnImplementation = Literal["sdpa", "eager", "flash_attention_2"]
DataFormat = Literal["jsonl", "json", "csv", "parquet"]

Name = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
Quantity = Annotated[str, Field(max_length=32, pattern=QUANTITY)]
# QUANTITY has no sign, so a quantity is above zero exactly when it has a non-zero digit. Both
# CEL's `matches` and `re.search` look for it anywhere in the string.
NON_ZERO_DIGIT = "[1-9]"


def _has_both(a: object, b: object) -> bool:
    return a is not None and b is not None


def _ray_version_ok(version: str) -> bool:
    if re.match(RAY_VERSION, version) is None:
        return True  # the pattern says what is wrong
    major, minor, _ = (int(part) for part in version.split("."))
    return major > 2 or (major == 2 and minor >= MIN_RAY_MINOR)


def matches_rule(field: str, pattern: str, message: str) -> Rule:
    """A required string field (camelCase name) that must match `pattern`, as a rule rather
    than a schema `pattern`: the API server's pattern error quotes the value, and a value
    that carries credentials must never be echoed. A CEL rule's error names only the field."""
    attribute = to_snake(field)
    compiled = re.compile(pattern)
    return Rule(
        cel=f"self.{field}.matches(r'{pattern}')",
        message=message,
        field=field,
        check=lambda m: compiled.search(getattr(m, attribute)) is not None,
    )


def no_parent_segments_rule(field: str) -> Rule:
    """No `..` segment in a URI: pvc://claim/../.. would reach outside the claim's mount."""
    attribute = to_snake(field)
    compiled = re.compile(PARENT_SEGMENT)
    return Rule(
        cel=f"!self.{field}.matches(r'{PARENT_SEGMENT}')",
        message=f"{field} must not contain '..' segments after its scheme",
        field=field,
        check=lambda m: compiled.search(getattr(m, attribute)) is None,
    )


def no_credentials_rule(field: str) -> Rule:
    """A required string field that must not carry credentials (kubetune.api.credentials)."""
    attribute = to_snake(field)
    return Rule(
        cel=f"!self.{field}.matches(r'{EMBEDDED_CREDENTIALS}')",
        message=f"{field} {CREDENTIALS_MESSAGE}",
        field=field,
        check=lambda m: not has_embedded_credentials(getattr(m, attribute)),
    )


def positive_quantity(field: str) -> Rule:
    """An optional Quantity field (camelCase name) that, when set, must be above zero: a
    pod of 0 CPU or 0 bytes of memory is accepted by Kubernetes but can never run a worker."""
    attribute = to_snake(field)
    return Rule(
        cel=f"!has(self.{field}) || self.{field}.matches('{NON_ZERO_DIGIT}')",
        message=f"{field} must be greater than zero",
        field=field,
        check=lambda m: (
            getattr(m, attribute) is None
            or re.search(NON_ZERO_DIGIT, getattr(m, attribute)) is not None
        ),
    )


def required_on_cpu_pool(field: str, meaning: str) -> Rule:
    """`field` of NodePoolSpec must be set when gpusPerNode is 0: with no GPU share to derive
    the pod size from, the user says how big each worker pod is."""
    attribute = to_snake(field)
    return Rule(
        cel=f"!has(self.gpusPerNode) || self.gpusPerNode != 0 || has(self.{field})",
        message=f"gpusPerNode 0 (a CPU-only pool) needs {field}: the {meaning} of each worker pod",
        field=field,
        check=lambda p: not p.cpu_only or getattr(p, attribute) is not None,
    )


# --------------------------------------------------------------------------- spec


class SecretKeyRef(KubeModel):
    """A key in a Secret in the job's namespace. Only the reference is stored; the value
    reaches the pods as an environment variable through `secretKeyRef`."""

    name: str = Field(
        min_length=1,
        max_length=SHORT,
        pattern=DNS_SUBDOMAIN,
        description="Name of the Secret in the job's namespace.",
    )
    key: str = Field(
        min_length=1,
        max_length=SHORT,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key within the Secret.",
    )


class SecretRef(KubeModel):
    """A whole Secret whose keys become environment variables (`envFrom`)."""

    name: str = Field(
        min_length=1,
        max_length=SHORT,
        pattern=DNS_SUBDOMAIN,
        description="Name of the Secret in the job's namespace.",
    )


class ModelSpec(KubeModel):
    """The base model to fine-tune."""

    rules = (
        no_credentials_rule("name"),
        matches_rule("name", NO_WHITESPACE, "name must not contain whitespace"),
    )

    name: str = Field(
        min_length=1,
        max_length=SHORT,
        description=(
            "Hugging Face model id (e.g. meta-llama/Llama-2-13b-hf), a local or "
            "mounted directory with an HF checkpoint, or builtin:tiny-llama / "
            "builtin:small-llama (small random Llamas built offline with a tokenizer trained "
            "on the training text, for quick starts and tests)."
        ),
    )
    revision: str = Field(
        "main", min_length=1, max_length=SHORT, description="Branch, tag or commit of a hub model."
    )
    token_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding a Hugging Face token for gated models (e.g. Llama-2)."
    )


ENTRY_POINT = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


def _option_rule(kind: str, option: str) -> Rule:
    """`option` is set exactly when the scorer is `kind` (no option silently ignored)."""
    return Rule(
        cel=f"(self.kind == '{kind}') == has(self.{option})",
        message=f"scorer {kind} needs {option}, and only {kind} takes it",
        field=option,
        check=lambda s: (s.kind == kind) == (getattr(s, to_snake(option)) is not None),
    )


class ScorerSpec(KubeModel):
    """How a chat or custom task's answers are scored (the other tasks have their own)."""

    rules = (
        *(
            _option_rule(scorer.name, scorer.option)
            for scorer in SCORERS.values()
            if scorer.option is not None
        ),
        Rule(
            cel="self.kind == 'numeric' || !has(self.tolerance)",
            message="tolerance is only used with scorer numeric",
            field="tolerance",
            check=lambda s: s.kind == "numeric" or s.tolerance is None,
        ),
    )

    kind: ScorerKind = Field(description=scorer_description())
    pattern: str | None = Field(
        None,
        min_length=1,
        max_length=SHORT,
        description="regex: a Python regular expression, searched in both texts.",
    )
    fields: list[Annotated[str, Field(min_length=1, max_length=SHORT)]] | None = Field(
        None, min_length=1, max_length=64, description="json_fields: the fields compared."
    )
    tolerance: float | None = Field(
        None, ge=0, description="numeric: the largest absolute difference that counts as equal."
    )
    entry_point: str | None = Field(
        None,
        max_length=SHORT,
        pattern=ENTRY_POINT,
        description=(
            "python: `package.module:function`, importable in the trainer image; called as"
            " function(prediction: str, reference: dict) and returns {metric: number or bool}"
            " (reference holds the row's fields and `completion`, the reference answer). It is"
            " imported and called once on a reference answer at job start, before training."
        ),
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"not a valid regular expression: {error}") from None
        return pattern


class TaskSpec(KubeModel):
    """What the model learns: a preset (prompt format, special tokens, evaluator) or custom
    templates over named fields of the data rows."""

    rules = (
        Rule(
            cel="self.preset != 'custom' || (has(self.promptTemplate) && has(self.completionTemplate))",
            message="preset custom needs promptTemplate and completionTemplate",
            field="promptTemplate",
            check=lambda t: (
                t.preset != "custom" or _has_both(t.prompt_template, t.completion_template)
            ),
        ),
        Rule(
            cel="self.preset == 'custom' || (!has(self.promptTemplate) && !has(self.completionTemplate))",
            message="promptTemplate and completionTemplate are only used with preset custom",
            field="promptTemplate",
            check=lambda t: (
                t.preset == "custom"
                or (t.prompt_template is None and t.completion_template is None)
            ),
        ),
        Rule(
            cel="!has(self.scorer) || self.preset in ["
            + ", ".join(f"'{name}'" for name in scoring_tasks())
            + "]",
            message=f"scorer is only used with preset {' or '.join(scoring_tasks())} (the other"
            " tasks have their own scorer)",
            field="scorer",
            check=lambda t: t.scorer is None or t.preset in scoring_tasks(),
        ),
    )

    preset: TaskPreset = Field(description=preset_description())
    special_tokens: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None,
        max_length=64,
        description=(
            "Tokens added to the tokenizer (embeddings resized). The last one ends every "
            "completion and is the stop token. Defaults to the preset's tokens."
        ),
    )
    prompt_template: str | None = Field(
        None,
        min_length=1,
        max_length=TEMPLATE,
        description="custom only: Python format string over row fields, e.g. 'Q: {question}'.",
    )
    completion_template: str | None = Field(
        None,
        min_length=1,
        max_length=TEMPLATE,
        description="custom only: format string for the target text, e.g. '{answer}'.",
    )
    scorer: ScorerSpec | None = Field(
        None,
        description=(
            "chat and custom only: how answers are scored (default exact_match). Its metrics"
            " are the ones in .status.evaluation."
        ),
    )


class DataSource(KubeModel):
    """One split of the data."""

    rules = (
        no_credentials_rule("uri"),
        matches_rule("uri", DATA_URI, DATA_URI_MEANING),
        no_parent_segments_rule("uri"),
    )

    uri: str = Field(
        min_length=1,
        max_length=LONG,
        description=(
            "Where the rows are: a local or mounted path, file://, s3://, gs://, "
            "pvc://claim/path, or hf://dataset?config=NAME&split=SPLIT."
        ),
    )
    format: DataFormat | None = Field(
        None, description="File format; inferred from the extension when omitted."
    )


class DataSpec(KubeModel):
    """Training, validation and test data."""

    rules = (
        Rule(
            cel="!(has(self.validation) && has(self.validationFraction))",
            message="set either validation or validationFraction, not both",
            field="validationFraction",
            check=lambda d: not _has_both(d.validation, d.validation_fraction),
        ),
    )

    train: DataSource = Field(description="Training rows.")
    validation: DataSource | None = Field(
        None, description="Validation rows, used each epoch for perplexity and checkpoint choice."
    )
    validation_fraction: float | None = Field(
        None,
        gt=0,
        le=0.5,
        description=(
            "Hold out this fraction of train (seeded) as validation when no validation "
            "split is given. With neither set, 0.1 is held out."
        ),
    )
    test: DataSource | None = Field(
        None, description="Test rows for evaluating the best checkpoint."
    )
    max_samples: int | None = Field(
        None,
        ge=1,
        le=100_000_000,
        description="Use at most this many training rows (after a seeded shuffle).",
    )


class EarlyStopping(KubeModel):
    """Stop when validation perplexity has not improved for `patience` epochs."""

    patience: int = Field(ge=1, le=100, description="Epochs without improvement before stopping.")
    min_delta: float = Field(
        0.0, ge=0, description="Smallest perplexity decrease that counts as improvement."
    )


class DeepSpeedSpec(KubeModel):
    """DeepSpeed ZeRO settings. Disabled, training uses plain DDP."""

    rules = (
        Rule(
            cel="!self.offloadParameters || self.stage == 3",
            message="offloadParameters needs ZeRO stage 3",
            field="offloadParameters",
            check=lambda d: not d.offload_parameters or d.stage == 3,
        ),
        Rule(
            cel="self.enabled || (!self.offloadOptimizer && !self.offloadParameters)",
            message="offloading needs DeepSpeed enabled",
            field="enabled",
            check=lambda d: d.enabled or not (d.offload_optimizer or d.offload_parameters),
        ),
    )

    enabled: bool = Field(True, description="Use DeepSpeed; false trains with DDP.")
    stage: int = Field(3, ge=1, le=3, description="ZeRO stage: 1, 2 or 3.")
    offload_optimizer: bool = Field(
        True, description="Keep optimizer state in CPU memory (ZeRO-Offload)."
    )
    offload_parameters: bool = Field(
        False, description="Keep parameters in CPU memory (stage 3 only)."
    )


class LoraSpec(KubeModel):
    """LoRA adapter settings (method: lora)."""

    rank: int = Field(8, ge=1, le=1024, description="Adapter rank r.")
    alpha: int = Field(16, ge=1, le=4096, description="Scaling alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        max_length=64,
        description="Module names that get adapters.",
    )


class TrainingSpec(KubeModel):
    """How to train. Defaults reproduce the case study; the pipeline fixes its defects
    (loss only on completion tokens, packing, per-epoch shuffle, schedule in optimizer steps)."""

    rules = (
        Rule(
            cel="self.method == 'lora' || !has(self.lora)",
            message="lora settings need method lora",
            field="lora",
            check=lambda t: t.method == "lora" or t.lora is None,
        ),
        Rule(
            cel="self.method != 'lora' || !self.deepspeed.enabled || self.deepspeed.stage != 3",
            message=(
                "method lora is not supported with DeepSpeed ZeRO stage 3: set "
                "training.deepspeed.stage to 2 (or 1), or training.deepspeed.enabled to false "
                "(DDP); LoRA's frozen base is replicated on every device"
            ),
            field="method",
            check=lambda t: t.method != "lora" or not t.deepspeed.enabled or t.deepspeed.stage != 3,
        ),
    )

    epochs: int = Field(10, ge=1, le=100, description="Passes over the training data.")
    learning_rate: float = Field(5e-6, gt=0, le=1, description="Peak learning rate (AdamW).")
    batch_size_per_device: int = Field(
        16, ge=1, le=1024, description="Sequences per device per micro-step."
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="Micro-steps per optimizer step."
    )
    context_length: int = Field(
        512,
        ge=32,
        le=131072,
        description=(
            "Tokens per sequence. Examples longer than this are dropped and reported, "
            "never cut (the stop token must survive)."
        ),
    )
    precision: Precision = Field(
        "bf16", description="Compute precision; bf16 on GPUs that support it."
    )
    seed: int = Field(
        42, ge=0, le=2**31 - 1, description="Seed for shuffling, splits and initialisation."
    )
    packing: bool = Field(
        True, description="Pack several examples per sequence (attention stays within an example)."
    )
    loss_on_prompt: bool = Field(
        False, description="Also train on prompt tokens (default: completion only)."
    )
    gradient_checkpointing: bool = Field(True, description="Recompute activations to save memory.")
    attn_implementation: AttnImplementation = Field(
        "sdpa",
        description=(
            "Attention kernel (transformers' attn_implementation): sdpa (PyTorch fused, the "
            "default), eager (plain matmuls), flash_attention_2 (needs the flash-attn package "
            "in the trainer image and GPUs). Packed examples never attend to each other with "
            "any of them."
        ),
    )
    scheduler: Scheduler = Field("linear", description="Learning-rate decay after warmup.")
    warmup_ratio: float = Field(
        0.03, ge=0, le=0.5, description="Fraction of optimizer steps spent warming up."
    )
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, le=1000, description="Gradient clipping norm.")
    method: Method = Field(
        "full", description="full: all parameters; lora: low-rank adapters (peft)."
    )
    lora: LoraSpec | None = Field(
        None, description="LoRA settings; defaults apply when method is lora."
    )
    checkpoints_to_keep: int = Field(
        1, ge=1, le=100, description="Keep this many best checkpoints by validation perplexity."
    )
    early_stopping: EarlyStopping | None = Field(
        None, description="Stop early on a validation plateau."
    )
    log_every_steps: int = Field(
        10,
        ge=1,
        le=100_000,
        description=(
            "Record a step point (train loss, learning rate, gradient norm, tokens/s, packing "
            "fill) every this many optimizer steps; the last step of an epoch always records."
        ),
    )
    deepspeed: DeepSpeedSpec = nested(DeepSpeedSpec, "DeepSpeed ZeRO settings.")


class StageTraining(KubeModel):
    """Per-stage overrides of spec.training."""

    epochs: int | None = Field(None, ge=1, le=100, description="Epochs for this stage.")
    learning_rate: float | None = Field(
        None, gt=0, le=1, description="Peak learning rate for this stage."
    )


class StageSpec(KubeModel):
    """One stage of a curriculum; it starts from the previous stage's best checkpoint."""

    name: Name = Field(description="Stage name (DNS label), shown in status.")
    task: TaskSpec | None = Field(None, description="Task of this stage; defaults to spec.task.")
    data: DataSpec = Field(description="Data of this stage.")
    training: StageTraining | None = Field(
        None, description="Overrides of spec.training for this stage."
    )


class EvaluationSpec(KubeModel):
    """Task evaluation of the best checkpoint on the test split."""

    enabled: bool = Field(True, description="Evaluate the best checkpoint after training.")
    baseline: bool = Field(
        False, description="Also evaluate the base model (few-shot prompt) for the gain."
    )
    max_samples: int | None = Field(
        None, ge=1, le=10_000_000, description="Evaluate at most this many test rows."
    )
    batch_size: int = Field(16, ge=1, le=1024, description="Generation batch size.")
    max_new_tokens: int = Field(256, ge=1, le=8192, description="Generation length limit.")
    few_shot_examples: int = Field(
        3, ge=0, le=32, description="Worked examples in the baseline prompt."
    )


class Toleration(KubeModel):
    """A Kubernetes toleration for the worker pods."""

    rules = (
        Rule(
            cel="self.operator != 'Exists' || !has(self.value)",
            message="a toleration with operator Exists must not have a value",
            field="value",
            check=lambda t: t.operator != "Exists" or t.value is None,
        ),
    )

    key: str | None = Field(
        None,
        max_length=SHORT,
        pattern=r"^([a-zA-Z0-9.\-_/]+)$",
        description="Taint key; empty with Exists matches all taints.",
    )
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; empty matches all."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="For NoExecute: how long to stay bound."
    )


class NodePoolSpec(KubeModel):
    """The node pool the Ray workers run on: GPU nodes (one worker per GPU), or CPU-only nodes
    with `gpusPerNode: 0` (one worker per pod, sized by `cpu` and `memory`)."""

    rules = (
        Rule(
            cel="has(self.gpusPerNode) || self.instanceType in ["
            + ", ".join(f"'{n}'" for n in sorted(INSTANCE_TYPES))
            + "]",
            message="unknown instanceType: set gpusPerNode (known types: see kubetune docs)",
            field="gpusPerNode",
            check=lambda p: (
                p.gpus_per_node is not None or lookup_instance_type(p.instance_type) is not None
            ),
        ),
        required_on_cpu_pool("cpu", "CPU request and limit"),
        required_on_cpu_pool("memory", "memory request and limit"),
        positive_quantity("cpu"),
        positive_quantity("memory"),
    )

    instance_type: str = Field(
        "g5.48xlarge",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9.\-]*$",
        description="Value of node.kubernetes.io/instance-type. Known types fill gpusPerNode and pod sizes.",
    )
    gpus_per_node: int | None = Field(
        None,
        ge=0,
        le=16,
        description=(
            "GPUs per node; required for instance types kubetune does not know. 0 makes a "
            "CPU-only pool: one Ray worker per pod, no GPU limit or toleration, and cpu "
            "and memory are required."
        ),
    )
    cpu: Quantity | None = Field(
        None,
        description=(
            "CPU request and limit of each worker pod. Required when gpusPerNode is "
            "0; on a GPU pool it overrides the CPU derived from the instance type."
        ),
    )
    memory: Quantity | None = Field(
        None,
        description=(
            "Memory request and limit of each worker pod. Required when gpusPerNode "
            "is 0; on a GPU pool it overrides the memory derived from the instance type."
        ),
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict,
        description="Extra node labels the worker pods require.",
        json_schema_extra={"maxProperties": 32},
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Tolerations of the worker pods (on a GPU pool, added to the GPU toleration).",
    )

    @property
    def cpu_only(self) -> bool:
        """gpusPerNode 0: the workers run on CPUs and never ask for a GPU."""
        return self.gpus_per_node == 0

    @property
    def effective_gpus_per_node(self) -> int:
        if self.gpus_per_node is not None:
            return self.gpus_per_node
        known = lookup_instance_type(self.instance_type)
        assert known is not None, "guarded by the gpusPerNode rule"
        return known.gpus


class HeadSpec(KubeModel):
    """The Ray head pod: coordination only, no training (num-cpus 0)."""

    cpu: Quantity = Field("4", description="CPU request and limit of the head pod.")
    memory: Quantity = Field("16Gi", description="Memory request and limit of the head pod.")
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict,
        description="Node labels for the head pod (a CPU pool).",
        json_schema_extra={"maxProperties": 32},
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations of the head pod."
    )


class SubmitterSpec(KubeModel):
    """The pod that runs `ray job submit` (RayJob submissionMode K8sJobMode, the operator's
    default). It runs next to the head (the head's nodeSelector and tolerations) and only
    waits for the dashboard, submits and follows the logs."""

    rules = (positive_quantity("cpu"), positive_quantity("memory"))

    cpu: Quantity = Field("500m", description="CPU request and limit of the submitter pod.")
    memory: Quantity = Field("1Gi", description="Memory request and limit of the submitter pod.")


class ComputeSpec(KubeModel):
    """Where and how wide training runs."""

    rules = (
        Rule(
            cel=f"!self.rayVersion.matches(r'{RAY_VERSION}') || "
            "int(self.rayVersion.split('.')[0]) > 2 || "
            f"(int(self.rayVersion.split('.')[0]) == 2 && "
            f"int(self.rayVersion.split('.')[1]) >= {MIN_RAY_MINOR})",
            message=f"rayVersion must be 2.{MIN_RAY_MINOR}.0 or newer (Ray token "
            "authentication, which kubetune always turns on)",
            field="rayVersion",
            check=lambda c: _ray_version_ok(c.ray_version),
        ),
    )

    workers: int = Field(
        1,
        ge=1,
        le=4096,
        description="Training workers: one GPU each, or one pod each on a CPU-only pool (gpusPerNode 0).",
    )
    node_pool: NodePoolSpec = nested(NodePoolSpec, "Node pool of the workers (GPU, or CPU-only).")
    head: HeadSpec = nested(HeadSpec, "Ray head pod.")
    submitter: SubmitterSpec = nested(
        SubmitterSpec, "Pod that submits the Ray job (submissionMode K8sJobMode, the default)."
    )
    image: str | None = Field(
        None,
        min_length=1,
        max_length=LONG,
        pattern=IMAGE_REFERENCE,
        description="Trainer image; defaults to the operator's configured image.",
    )
    ray_version: str = Field(
        "2.60.0",
        pattern=RAY_VERSION,
        max_length=32,
        description="Ray version of the image (KubeRay needs it).",
    )


class OutputSpec(KubeModel):
    """Where checkpoints and results go."""

    rules = (
        no_credentials_rule("storageURI"),
        matches_rule("storageURI", STORAGE_URI, STORAGE_URI_MEANING),
        no_parent_segments_rule("storageURI"),
        Rule(
            cel="!has(self.credentialsSecretRef) || self.storageURI.startsWith('s3://') || "
            "self.storageURI.startsWith('gs://')",
            message="credentialsSecretRef is only used with s3:// or gs:// storage",
            field="credentialsSecretRef",
            check=lambda o: (
                o.credentials_secret_ref is None or o.storage_uri.startswith(("s3://", "gs://"))
            ),
        ),
    )

    storage_uri: str = Field(
        alias="storageURI",
        min_length=1,
        max_length=LONG,
        description=(
            "Durable storage for checkpoints: s3://bucket/prefix, gs://bucket/prefix or "
            "pvc://claim/path on Kubernetes; a local path for kubetune run. Each run writes "
            "under its own folder, <storageURI>/<job uid> (kubetune run: <storageURI>/<run "
            "id>), shown as status.outputURI: jobs that share a storageURI never overwrite or "
            "prune each other's checkpoints."
        ),
    )
    credentials_secret_ref: SecretRef | None = Field(
        None, description="Secret whose keys (e.g. AWS_ACCESS_KEY_ID) become the pods' environment."
    )


def run_storage(storage_uri: str, run_id: str | None) -> str:
    """Where one run writes: its own folder under spec.output.storageURI, named by the job's
    uid (the operator) or a run id (`kubetune run`); the storageURI itself without one."""
    return f"{storage_uri.rstrip('/')}/{run_id}" if run_id else storage_uri


class RunPolicy(KubeModel):
    """Scheduling, queueing and lifetime."""

    rules = (
        immutable("backoffLimit", prefix="runPolicy."),
        *(
            immutable(f, optional=True, prefix="runPolicy.")
            for f in (
                "queueName",
                "activeDeadlineSeconds",
                "preRunningDeadlineSeconds",
                "stallTimeoutSeconds",
                "ttlSecondsAfterFinished",
            )
        ),
        immutable("failOnStall", prefix="runPolicy."),
    )

    suspend: bool = Field(
        False, description="Suspend (or keep suspended) the run; the only mutable field."
    )
    queue_name: str | None = Field(
        None,
        min_length=1,
        max_length=63,
        pattern=DNS_SUBDOMAIN,
        description="Kueue LocalQueue; sets kueue.x-k8s.io/queue-name on the RayJob.",
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Fail the run after this many seconds."
    )
    pre_running_deadline_seconds: int | None = Field(
        None,
        ge=1,
        description=(
            "Fail the run when its Ray job is not running this many seconds after its Ray "
            "cluster was requested (pods unschedulable, an image that cannot be pulled, a "
            "missing Secret or claim), instead of waiting forever. Unset: the operator's "
            "default, 1800 (KUBETUNE_PRE_RUNNING_DEADLINE_SECONDS). Time queued in Kueue "
            "does not count: the RayJob stays suspended until admitted. KubeRay 1.6+."
        ),
    )
    stall_timeout_seconds: int | None = Field(
        None,
        ge=0,
        description=(
            "Mark a running job Stalled (condition Stalled, a Warning event) when the trainer "
            "made no progress (an optimizer step, an evaluated batch) for this many seconds; "
            "progress clears it. Unset: the operator's default, 1800 "
            "(KUBETUNE_STALL_TIMEOUT_SECONDS); 0 disables. Keep it above the longest quiet "
            "stretch of a healthy run (a checkpoint save of the largest model)."
        ),
    )
    fail_on_stall: bool = Field(
        False,
        description=(
            "End a Stalled job: phase Failed, reason Stalled, and its Ray cluster deleted so "
            "the GPUs are freed. Default: only mark it Stalled."
        ),
    )
    backoff_limit: int = Field(0, ge=0, le=100, description="RayJob retries (each a new cluster).")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the Ray cluster this long after the run ends."
    )
    skip_fit_check: bool = Field(
        False,
        description=(
            "Run even when `kubetune plan` says the job will not fit (its memory model is an "
            "estimate: see the README's planning section). Default: `kubetune validate` fails "
            "such a job."
        ),
    )


class FineTuneJobSpec(KubeModel):
    """A complete fine-tuning run: data, training, best-checkpoint choice and evaluation."""

    rules = (
        Rule(
            cel="has(self.data) != has(self.stages)",
            message="set exactly one of data or stages",
            field="data",
            check=lambda s: (s.data is None) != (s.stages is None),
        ),
        Rule(
            cel="!has(self.stages) || self.stages.all(s, self.stages.exists_one(t, t.name == s.name))",
            message="stage names must be unique",
            field="stages",
            check=lambda s: s.stages is None or len({x.name for x in s.stages}) == len(s.stages),
        ),
        Rule(
            cel=(
                "!self.evaluation.enabled || (has(self.data) ? has(self.data.test) : "
                "has(self.stages[size(self.stages) - 1].data.test))"
            ),
            message=(
                "evaluation.enabled needs a test split (data.test, or the last stage's "
                "data.test); add one or set evaluation.enabled: false"
            ),
            field="evaluation.enabled",
            check=lambda s: not s.evaluation.enabled or stages_of(s)[-1].data.test is not None,
        ),
        # Only the last stage's task is evaluated: a scorer anywhere else would be ignored.
        Rule(
            cel=(
                "!has(self.stages) || self.stages.all(s, !has(s.task) || !has(s.task.scorer) || "
                "s.name == self.stages[size(self.stages) - 1].name)"
            ),
            message=(
                "only the last stage is evaluated: a task.scorer on an earlier stage would never"
                " be used; move it to the last stage"
            ),
            field="stages",
            check=lambda s: (
                s.stages is None
                or all(stage.task is None or stage.task.scorer is None for stage in s.stages[:-1])
            ),
        ),
        Rule(
            cel=(
                "!has(self.stages) || !has(self.task.scorer) || "
                "!has(self.stages[size(self.stages) - 1].task)"
            ),
            message=(
                "task.scorer would never be used: the last stage, the one evaluated, sets its own"
                " task; put the scorer there"
            ),
            field="task.scorer",
            check=lambda s: s.stages is None or s.task.scorer is None or s.stages[-1].task is None,
        ),
        *(immutable(f) for f in ("model", "task", "training", "evaluation", "compute", "output")),
        *(immutable(f, optional=True) for f in ("data", "stages")),
    )

    model: ModelSpec = Field(description="Base model.")
    task: TaskSpec = Field(description="Task (prompt format, special tokens, evaluator).")
    data: DataSpec | None = Field(None, description="Data of a single-stage run (or use stages).")
    stages: list[StageSpec] | None = Field(
        None,
        min_length=1,
        max_length=8,
        description="Curriculum: stages run in order, each from the previous best checkpoint.",
    )
    training: TrainingSpec = nested(TrainingSpec, "Training hyper-parameters.")
    evaluation: EvaluationSpec = nested(EvaluationSpec, "Evaluation of the best checkpoint.")
    compute: ComputeSpec = nested(ComputeSpec, "Workers and node pools.")
    output: OutputSpec = Field(description="Durable storage for checkpoints and results.")
    run_policy: RunPolicy = nested(RunPolicy, "Suspension, queueing and lifetime.")


# --------------------------------------------------------------------------- status

Phase = Literal[
    "Pending",
    "Queued",
    "Provisioning",
    "Training",
    "Evaluating",
    "Succeeded",
    "Failed",
    "Suspended",
]
TERMINAL_PHASES: tuple[str, ...] = ("Succeeded", "Failed")


class Condition(KubeModel):
    """A standard Kubernetes condition."""

    type: str = Field(
        max_length=316, description="Condition type, e.g. Ready, Training, Succeeded."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase reason for the last transition.")
    message: str = Field("", max_length=MESSAGE_LIMIT, description="Human-readable details.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        None, ge=0, description="spec generation this reflects."
    )


class RayJobRef(KubeModel):
    """The KubeRay RayJob that runs the training."""

    name: str = Field(description="RayJob name.")
    job_id: str | None = Field(None, description="Ray job submission id.")
    dashboard_url: str | None = Field(
        None, alias="dashboardURL", description="Ray dashboard address."
    )
    deployment_status: str | None = Field(None, description="RayJob status.jobDeploymentStatus.")
    job_status: str | None = Field(None, description="RayJob status.jobStatus.")
    attempts: int = Field(0, ge=0, description="Cluster attempts so far (1 + retries).")


class Progress(KubeModel):
    """Where the run is now."""

    stage: str | None = Field(None, description="Current stage name.")
    epoch: int = Field(0, ge=0, description="Current epoch (1-based once training started).")
    total_epochs: int = Field(0, ge=0, description="Epochs planned for the current stage.")
    step: int = Field(0, ge=0, description="Optimizer steps done in the current stage.")
    total_steps: int = Field(0, ge=0, description="Optimizer steps planned for the current stage.")
    eta_seconds: int | None = Field(
        None, ge=0, description="Estimated seconds until training ends."
    )


class EpochMetrics(KubeModel):
    """One point of the learning curve."""

    stage: str = Field(max_length=SHORT, description="Stage name.")
    epoch: int = Field(ge=1, description="Epoch number, 1-based.")
    step: int | None = Field(None, ge=0, description="Optimizer steps done in the stage by then.")
    train_loss: float = Field(description="Mean training loss over completion tokens.")
    validation_loss: float = Field(description="Token-weighted mean validation loss.")
    validation_perplexity: float = Field(description="exp(validationLoss).")
    checkpoint: str | None = Field(
        None, max_length=LONG, description="URI of this epoch's checkpoint, if kept."
    )


class StepMetrics(KubeModel):
    """One point of the per-step training curve (means over the steps since the last point,
    across all workers)."""

    stage: str = Field(max_length=SHORT, description="Stage name.")
    epoch: int = Field(ge=1, description="Epoch number, 1-based.")
    step: int = Field(ge=1, description="Optimizer steps done in the stage.")
    train_loss: float = Field(description="Mean training loss over completion tokens.")
    learning_rate: float = Field(description="Learning rate of the last step.")
    grad_norm: float | None = Field(
        None, description="Gradient norm before clipping, mean over the steps."
    )
    tokens_per_second: float = Field(ge=0, description="Non-padding tokens per second.")
    useful_tokens_per_second: float = Field(
        ge=0, description="Completion tokens (those that carry loss) per second."
    )
    packing_fill: float = Field(
        ge=0, le=1, description="Share of the batches' contextLength slots holding tokens."
    )


ResumeSource = Literal["EpochEnd", "Preemption", "StageEnd"]
MAX_RESUMES = 50


class ResumePoint(KubeModel):
    """Where training went on after an interruption: a worker lost, a preemption, a new
    attempt on a fresh cluster. Training resumes from the latest committed point in the job's
    storage; the steps after it (none for a preemption save) are trained again."""

    stage: str = Field(max_length=SHORT, description="Stage name.")
    epoch: int = Field(ge=0, description="Epochs of the stage finished at the point.")
    step: int = Field(ge=0, description="Optimizer steps of the stage done at the point.")
    saved_by: ResumeSource = Field(
        description=(
            "What saved the point: EpochEnd (the end of an epoch), Preemption (a save at an "
            "optimizer-step boundary when a worker pod was being stopped), StageEnd (the stage "
            "had finished in an earlier attempt and was not trained again)."
        )
    )
    time: str = Field(max_length=64, description="When training resumed (RFC 3339).")


PlanVerdict = Literal["Fits", "WillNotFit", "Unknown"]


class PlanPhase(KubeModel):
    """What one phase of the run needs (`kubetune plan`)."""

    name: str = Field(
        max_length=32, description="training, checkpoint, hand-off, evaluation or baseline."
    )
    devices: int = Field(
        ge=1, description="Devices one copy spans (evaluation splits a model by layers)."
    )
    device_gib: float = Field(ge=0, description="Memory per device (GPU, or CPU worker pod), GiB.")
    host_gib: float = Field(ge=0, description="Host memory per node, GiB.")
    disk_gib: float = Field(ge=0, description="Node-local disk for staging, GiB.")


class PlanSummary(KubeModel):
    """The plan the operator made when it accepted (or refused) the job: `kubetune plan`."""

    verdict: PlanVerdict = Field(description="Fits, WillNotFit, or Unknown (model size unknown).")
    message: str = Field(
        max_length=MESSAGE_LIMIT, description="The binding constraint and its margin."
    )
    remedy: str | None = Field(
        None, max_length=MESSAGE_LIMIT, description="A single change that would fit."
    )
    nodes: int = Field(0, ge=0, description="Nodes of the worker pool.")
    gpus: int = Field(0, ge=0, description="GPUs in all.")
    storage_gib: float = Field(0, ge=0, description="Storage the checkpoints take at most, GiB.")
    scratch_gib: int | None = Field(
        None,
        ge=1,
        description="Node-local scratch of each worker pod (emptyDir sizeLimit and "
        "ephemeral-storage request), GiB: the largest phase's disk need with 25% headroom.",
    )
    phases: list[PlanPhase] = Field(default_factory=list, max_length=8, description="Per phase.")


class BestCheckpoint(KubeModel):
    """The checkpoint with the lowest validation perplexity (of the last stage)."""

    uri: str = Field(max_length=LONG, description="Where the consolidated HF checkpoint is.")
    stage: str = Field(max_length=SHORT, description="Stage it comes from.")
    epoch: int = Field(ge=1, description="Epoch it comes from.")
    validation_perplexity: float = Field(description="Its validation perplexity.")


class EvaluationResult(KubeModel):
    """Task scores of the best checkpoint (and of the base model, when asked)."""

    task: str = Field(max_length=SHORT, description="Evaluated task preset.")
    samples: int = Field(ge=0, description="Test rows scored.")
    primary_metric: str = Field(
        max_length=SHORT, description="Name of the headline metric (shown as Score)."
    )
    score: float = Field(description="Value of the headline metric.")
    metrics: dict[str, float] = Field(
        default_factory=dict, max_length=METRICS_LIMIT, description="All metrics of the checkpoint."
    )
    baseline: dict[str, float] | None = Field(
        None, max_length=METRICS_LIMIT, description="Same metrics for the base model."
    )
    gain: dict[str, float] | None = Field(
        None,
        max_length=METRICS_LIMIT,
        description="Checkpoint minus base model, for each metric both have (with a baseline).",
    )

    def with_gain(self) -> EvaluationResult:
        """This result with `gain` derived from `metrics` and `baseline` (never taken from the
        trainer: one fact, computed in one place)."""
        if self.baseline is None:
            return self.model_copy(update={"gain": None})
        gain = {k: v - self.baseline[k] for k, v in self.metrics.items() if k in self.baseline}
        return self.model_copy(update={"gain": gain})


class FineTuneJobStatus(KubeModel):
    """Observed state, written only by the operator."""

    phase: Phase = Field(
        "Pending",
        description="Pending, Queued, Provisioning, Training, Evaluating, Succeeded, Failed or Suspended.",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Latest observations, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(None, ge=0, description="Generation last acted upon.")
    start_time: str | None = Field(
        None, description="When training resources were first requested."
    )
    completion_time: str | None = Field(
        None, description="When the run reached Succeeded or Failed."
    )
    message: str | None = Field(
        None, max_length=MESSAGE_LIMIT, description="Summary of the current state or the failure."
    )
    ray_job: RayJobRef | None = Field(None, description="The RayJob running the training.")
    output_uri: str | None = Field(
        None,
        alias="outputURI",
        max_length=LONG + 64,
        description=(
            "This run's own folder: spec.output.storageURI/<job uid> (kubetune run: /<run id>); "
            "its checkpoints and per-step series are there and nowhere else."
        ),
    )
    progress: Progress | None = Field(None, description="Current stage, epoch, step and ETA.")
    epochs: list[EpochMetrics] = Field(
        default_factory=list, description="Learning curve, one entry per epoch."
    )
    steps: list[StepMetrics] = Field(
        default_factory=list,
        max_length=STEP_POINTS,
        description=(
            f"Per-step training curve, downsampled to at most {STEP_POINTS} points (the full "
            "series is in the run's storage, <outputURI>/<stage>/steps.jsonl)."
        ),
    )
    best_checkpoint: BestCheckpoint | None = Field(
        None, description="Best checkpoint by validation perplexity."
    )
    resumes: list[ResumePoint] = Field(
        default_factory=list,
        max_length=MAX_RESUMES,
        description=f"Where training resumed after interruptions (the latest {MAX_RESUMES}).",
    )
    evaluation: EvaluationResult | None = Field(None, description="Evaluation scores.")
    plan: PlanSummary | None = Field(
        None, description="Memory fit, nodes and storage planned at admission (`kubetune plan`)."
    )


# --------------------------------------------------------------------------- resource


class ObjectMeta(KubeModel):
    """The part of metadata kubetune reads; the API server's own fields pass through."""

    model_config = KubeModel.model_config | {"extra": "allow"}

    name: str = Field(
        min_length=1, max_length=SHORT, pattern=DNS_SUBDOMAIN, description="Job name."
    )
    namespace: str | None = Field(None, description="Namespace.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")


class FineTuneJob(KubeModel):
    """A FineTuneJob resource."""

    api_version: Literal["kubetune.dev/v1alpha1"] = Field(
        "kubetune.dev/v1alpha1", description="kubetune.dev/v1alpha1"
    )
    kind: Literal["FineTuneJob"] = Field("FineTuneJob", description="FineTuneJob")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: FineTuneJobSpec = Field(description="Desired run.")
    status: FineTuneJobStatus | None = Field(None, description="Observed state.")


def default_stage_name(spec: FineTuneJobSpec) -> str:
    """Single-stage runs report their stage as the task preset, e.g. 'gsm8k'."""
    return spec.task.preset


def stage_training(spec: FineTuneJobSpec, stage: StageSpec) -> TrainingSpec:
    """spec.training with the stage's overrides (epochs, learning rate) applied."""
    overrides = stage.training
    update: dict[str, Any] = {}
    if overrides is not None and overrides.epochs is not None:
        update["epochs"] = overrides.epochs
    if overrides is not None and overrides.learning_rate is not None:
        update["learning_rate"] = overrides.learning_rate
    return spec.training.model_copy(update=update)


def stages_of(spec: FineTuneJobSpec) -> list[StageSpec]:
    """The run as a list of stages, so callers need not special-case single-stage jobs."""
    if spec.stages is not None:
        return list(spec.stages)
    assert spec.data is not None, "guarded by the data/stages rule"
    return [StageSpec(name=default_stage_name(spec), task=spec.task, data=spec.data)]


def to_wire(value: Any) -> Any:
    return value.to_wire() if isinstance(value, KubeModel) else value
