"""Parse FineTuneJobs and explain what is wrong with them, field by field.

Two layers: what the CRD schema also enforces (pydantic structure + cross-field rules,
so `kubetune validate` agrees with the API server), and semantic checks the schema cannot
express (`semantic_problems`), which the operator reports as `InvalidSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kubetune.api.credentials import redact
from kubetune.api.instance_types import lookup_instance_type
from kubetune.api.v1alpha1 import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    DURABLE_SCHEMES,
    IMAGE_REFERENCE,
    QUANTITY,
    FineTuneJob,
    FineTuneJobSpec,
    stage_training,
    stages_of,
)

# Regular expressions mean little to users; say what the pattern stands for.
PATTERN_MEANINGS = {
    DNS_LABEL: "must be a DNS label: lower-case letters, digits and '-', starting and ending alphanumeric",
    DNS_SUBDOMAIN: "must be a DNS subdomain: lower-case letters, digits, '-' and '.'",
    QUANTITY: "must be a Kubernetes quantity such as 4, 500m, 16Gi",
    IMAGE_REFERENCE: "must be an image reference such as registry.example/team/trainer:1.0",
}


@dataclass(frozen=True)
class FieldProblem:
    path: str
    message: str
    cluster_only: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(ValueError):
    """A FineTuneJob that cannot be accepted; `problems` names every offending field."""

    def __init__(self, problems: list[FieldProblem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def format_location(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(root)"


def problems_from_validation_error(
    error: ValidationError, prefix: tuple[str, ...] = ()
) -> list[FieldProblem]:
    problems = []
    for item in error.errors():
        loc = prefix + tuple(item["loc"])
        if item["type"] == "cross_field" and item.get("ctx", {}).get("field"):
            loc = loc + tuple(item["ctx"]["field"].split("."))
        message = item["msg"]
        if item["type"] == "string_pattern_mismatch":
            pattern = item.get("ctx", {}).get("pattern", "")
            got = redact(str(item["input"]))
            message = f"{PATTERN_MEANINGS.get(pattern, message)} (got {got!r})"
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; unknown fields are errors)"
        problems.append(FieldProblem(format_location(loc), message))
    return problems


def parse_finetunejob(obj: Any) -> FineTuneJob:
    """Parse a whole resource (apiVersion, kind, metadata, spec[, status])."""
    try:
        return FineTuneJob.model_validate(obj)
    except ValidationError as error:
        raise SpecError(problems_from_validation_error(error)) from None


def parse_spec(spec: Any) -> FineTuneJobSpec:
    try:
        return FineTuneJobSpec.model_validate(spec)
    except ValidationError as error:
        raise SpecError(problems_from_validation_error(error, ("spec",))) from None


def semantic_problems(spec: FineTuneJobSpec) -> list[FieldProblem]:
    """What a schema cannot say. `cluster_only` problems only matter on Kubernetes."""
    problems: list[FieldProblem] = []
    pool = spec.compute.node_pool
    gpus = pool.effective_gpus_per_node
    known = lookup_instance_type(pool.instance_type)
    if known is not None and pool.gpus_per_node is not None and pool.gpus_per_node > known.gpus:
        problems.append(
            FieldProblem(
                "spec.compute.nodePool.gpusPerNode",
                f"{pool.instance_type} has {known.gpus} GPUs, not {pool.gpus_per_node}",
            )
        )
    workers = spec.compute.workers
    # A CPU-only pool has one pod per worker: any count fills whole pods.
    if not pool.cpu_only and workers > gpus and workers % gpus:
        problems.append(
            FieldProblem(
                "spec.compute.workers",
                f"{workers} workers do not fill whole {pool.instance_type} nodes of {gpus} GPUs: "
                f"use at most {gpus} or a multiple of {gpus} (e.g. {workers - workers % gpus} or "
                f"{workers + gpus - workers % gpus})",
            )
        )
    early = spec.training.early_stopping
    for index, stage in enumerate(stages_of(spec)):
        epochs = stage_training(spec, stage).epochs
        if early is not None and early.patience >= epochs:
            where = f"spec.stages[{index}]" if spec.stages else "spec.training"
            problems.append(
                FieldProblem(
                    "spec.training.earlyStopping.patience",
                    f"patience {early.patience} >= {epochs} epochs ({where}): early stopping could never trigger",
                )
            )
    if not spec.output.storage_uri.startswith(DURABLE_SCHEMES):
        problems.append(
            FieldProblem(
                "spec.output.storageURI",
                f"{spec.output.storage_uri!r} is a local path: on Kubernetes checkpoints need durable "
                "storage (s3://, gs:// or pvc://claim/path)",
                cluster_only=True,
            )
        )
    return problems
