"""The trainer's report: the one document the trainer writes and the operator reads.

In a cluster it lives in the job's FineTuneJobReport (field `report`, the document as JSON
text), which the operator creates; locally `kubetune run` writes it to a file. The operator mirrors it into
`FineTuneJob.status`, so both sides share these models (and the status sub-models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, Field

from kubetune.api.base import KubeModel
from kubetune.api.v1alpha1 import (
    MAX_RESUMES,
    MESSAGE_LIMIT,
    STEP_POINTS,
    BestCheckpoint,
    EpochMetrics,
    EvaluationResult,
    ResumePoint,
    StepMetrics,
)

# The kind that carries the report in a cluster: kubetune's own, so the operator holds write
# rights on nothing cluster-wide but its own CRDs (a ConfigMap channel needed them on every
# ConfigMap). The document stays JSON text: a diverged run's NaN/Inf must reach the operator,
# and JSON objects cannot carry them.
REPORT_KIND = "FineTuneJobReport"
REPORT_PLURAL = "finetunejobreports"
REPORT_SINGULAR = "finetunejobreport"
REPORT_FIELD = "report"
# The report's JSON text, bounded below etcd's 1.5 MiB request limit; the bounds below keep a
# real report far smaller.
REPORT_DOCUMENT_LIMIT = 1_000_000
# 2: jobUid (the report names the FineTuneJob incarnation it belongs to).
# 3: checkpoints under the job's own folder, <storageURI>/<jobUid> (run_storage); a report of
#    schema 2 (a run started before an operator upgrade) still writes <storageURI>/<stage>.
REPORT_SCHEMA_VERSION = 3
PER_JOB_STORAGE_SINCE = 3
# Bounds that keep one report, and the status mirrored from it, far below REPORT_DOCUMENT_LIMIT
# and etcd's object limit: every list and free text the trainer writes is bounded.
MAX_EPOCHS = 2048
MAX_SPLITS = 64
REPORT_TEXT_LIMIT = MESSAGE_LIMIT

T = TypeVar("T")

TrainerPhase = Literal["Preparing", "Training", "Evaluating", "Succeeded", "Failed"]
# What the trainer can tell about its own failure (kubetune.diagnosis classifies the text of
# an older trainer's error the same way).
TrainerErrorReason = Literal["OOMKilled", "DataError", "ScorerError", "CollectiveTimeout"]


class Heartbeat(KubeModel):
    """The trainer's last progress: the operator marks a job Stalled when it gets old."""

    at: str = Field(max_length=64, description="When the trainer last made progress (RFC 3339).")
    step: int = Field(0, ge=0, description="Optimizer steps done in the current stage then.")
    activity: str = Field(
        "",
        max_length=253,
        description="What moved, e.g. 'optimizer step 120/400', 'evaluated 64/1319 rows'.",
    )


class DroppedRows(KubeModel):
    """Rows left out of one split for one reason; never silent."""

    reason: str = Field(
        max_length=1024,
        description="Why, e.g. 'too long for contextLength 512', 'missing field answer'.",
    )
    count: int = Field(ge=0, description="How many rows.")
    examples: list[int] = Field(
        default_factory=list,
        max_length=20,
        description="Row numbers (1-based, in the source file) of the first few.",
    )


class SplitReport(KubeModel):
    """What happened to the rows of one split."""

    split: str = Field(
        max_length=253, description="train, validation or test (with the stage name for curricula)."
    )
    source: str = Field(max_length=4096, description="URI the rows were read from.")
    rows_read: int = Field(ge=0, description="Rows read from the source.")
    rows_used: int = Field(ge=0, description="Rows that made it into training or evaluation.")
    dropped: list[DroppedRows] = Field(
        default_factory=list, max_length=64, description="Rows dropped, by reason."
    )


class TrainerReport(KubeModel):
    """Progress and results of a run, as the trainer last wrote them."""

    schema_version: int = Field(REPORT_SCHEMA_VERSION, description="Report format version.")
    job_uid: str | None = Field(
        None, max_length=128, description="uid of the FineTuneJob this report belongs to."
    )
    phase: TrainerPhase = Field("Preparing", description="What the trainer is doing.")
    stage: str | None = Field(None, max_length=253, description="Current stage name.")
    stage_index: int = Field(0, ge=0, description="0-based index of the current stage.")
    total_stages: int = Field(1, ge=1, description="Stages in the run.")
    epoch: int = Field(0, ge=0, description="Current epoch, 1-based once training started.")
    total_epochs: int = Field(0, ge=0, description="Epochs planned for the current stage.")
    step: int = Field(0, ge=0, description="Optimizer steps done in the current stage.")
    total_steps: int = Field(0, ge=0, description="Optimizer steps planned for the current stage.")
    eta_seconds: int | None = Field(None, ge=0, description="Estimated seconds left in training.")
    updated_at: str | None = Field(
        None, max_length=64, description="When this report was written (RFC 3339)."
    )
    epochs: list[EpochMetrics] = Field(
        default_factory=list, max_length=MAX_EPOCHS, description="Learning curve so far."
    )
    steps: list[StepMetrics] = Field(
        default_factory=list,
        max_length=STEP_POINTS,
        description="Per-step curve of every stage so far, downsampled (see `downsample`).",
    )
    best_checkpoint: BestCheckpoint | None = Field(None, description="Best checkpoint so far.")
    resumes: list[ResumePoint] = Field(
        default_factory=list,
        max_length=MAX_RESUMES,
        description=f"Where training resumed after interruptions, oldest first (the last {MAX_RESUMES}).",
    )
    data: list[SplitReport] = Field(
        default_factory=list,
        max_length=MAX_SPLITS,
        description="Rows read, used and dropped per split.",
    )
    evaluation: EvaluationResult | None = Field(None, description="Scores, once evaluated.")
    heartbeat: Heartbeat | None = Field(None, description="The trainer's last progress.")
    error: str | None = Field(
        None, max_length=REPORT_TEXT_LIMIT, description="Why the trainer failed (phase Failed)."
    )
    error_reason: TrainerErrorReason | None = Field(
        None, description="The kind of failure, when the trainer could tell (phase Failed)."
    )


def downsample(points: list[T], limit: int = STEP_POINTS) -> list[T]:
    """At most `limit` points, evenly spread, always keeping the first and the last: the
    shape of a long curve in an object of bounded size."""
    if len(points) <= limit:
        return list(points)
    if limit == 1:
        return [points[-1]]
    last = len(points) - 1
    picks = sorted({round(i * last / (limit - 1)) for i in range(limit)})
    return [points[i] for i in picks]


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ParsedReport:
    report: TrainerReport
    ignored: tuple[str, ...]  # paths of fields this version does not know (a newer trainer)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model inside X, X | None, list[X] or dict[str, X], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation) if get_origin(annotation) is not None else ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def strip_unknown(model: type[BaseModel], data: Any, path: str = "") -> tuple[Any, list[str]]:
    """`data` without the keys `model` does not know (recursively), and their paths.

    Only unknown *keys* are forgiven: a known field with a wrong type or value still fails
    validation, so a report is never half-read.
    """
    if not isinstance(data, dict):
        return data, []
    by_alias = {(f.alias or name): f for name, f in model.model_fields.items()}
    by_alias.update(model.model_fields)
    kept: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in data.items():
        field = by_alias.get(key)
        where = f"{path}.{key}" if path else str(key)
        if field is None:
            ignored.append(where)
            continue
        inner = _model_of(field.annotation)
        if inner is not None and isinstance(value, list):
            cleaned = [strip_unknown(inner, item, f"{where}[{i}]") for i, item in enumerate(value)]
            value = [item for item, _ in cleaned]
            ignored += [p for _, paths in cleaned for p in paths]
        elif inner is not None:
            value, paths = strip_unknown(inner, value, where)
            ignored += paths
        kept[key] = value
    return kept, ignored


def parse_report_json(text: str, model: type[TrainerReport] = TrainerReport) -> ParsedReport:
    """Read a report written by this or a newer trainer: unknown fields are set aside (and
    named), known ones are validated. Raises ValueError (pydantic's ValidationError is one)."""
    import json

    data, ignored = strip_unknown(model, json.loads(text))
    return ParsedReport(model.model_validate(data), tuple(ignored))
