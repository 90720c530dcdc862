"""The trainer's report: the one document the trainer writes and the operator reads.

In a cluster it lives in the per-job ConfigMap (key `report.json`) that the operator
creates; locally `kubetune run` writes it to a file. The operator mirrors it into
`FineTuneJob.status`, so both sides share these models (and the status sub-models).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kubetune.api.base import KubeModel
from kubetune.api.v1alpha1 import BestCheckpoint, EpochMetrics, EvaluationResult

REPORT_KEY = "report.json"
REPORT_SCHEMA_VERSION = 1

TrainerPhase = Literal["Preparing", "Training", "Evaluating", "Succeeded", "Failed"]


class DroppedRows(KubeModel):
    """Rows left out of one split for one reason; never silent."""

    reason: str = Field(
        description="Why, e.g. 'too long for contextLength 512', 'missing field answer'."
    )
    count: int = Field(ge=0, description="How many rows.")
    examples: list[int] = Field(
        default_factory=list,
        max_length=20,
        description="Row numbers (1-based, in the source file) of the first few.",
    )


class SplitReport(KubeModel):
    """What happened to the rows of one split."""

    split: str = Field(description="train, validation or test (with the stage name for curricula).")
    source: str = Field(description="URI the rows were read from.")
    rows_read: int = Field(ge=0, description="Rows read from the source.")
    rows_used: int = Field(ge=0, description="Rows that made it into training or evaluation.")
    dropped: list[DroppedRows] = Field(default_factory=list, description="Rows dropped, by reason.")


class TrainerReport(KubeModel):
    """Progress and results of a run, as the trainer last wrote them."""

    schema_version: int = Field(REPORT_SCHEMA_VERSION, description="Report format version.")
    phase: TrainerPhase = Field("Preparing", description="What the trainer is doing.")
    stage: str | None = Field(None, description="Current stage name.")
    stage_index: int = Field(0, ge=0, description="0-based index of the current stage.")
    total_stages: int = Field(1, ge=1, description="Stages in the run.")
    epoch: int = Field(0, ge=0, description="Current epoch, 1-based once training started.")
    total_epochs: int = Field(0, ge=0, description="Epochs planned for the current stage.")
    step: int = Field(0, ge=0, description="Optimizer steps done in the current stage.")
    total_steps: int = Field(0, ge=0, description="Optimizer steps planned for the current stage.")
    eta_seconds: int | None = Field(None, ge=0, description="Estimated seconds left in training.")
    updated_at: str | None = Field(None, description="When this report was written (RFC 3339).")
    epochs: list[EpochMetrics] = Field(default_factory=list, description="Learning curve so far.")
    best_checkpoint: BestCheckpoint | None = Field(None, description="Best checkpoint so far.")
    data: list[SplitReport] = Field(
        default_factory=list, description="Rows read, used and dropped per split."
    )
    evaluation: EvaluationResult | None = Field(None, description="Scores, once evaluated.")
    error: str | None = Field(None, description="Why the trainer failed (phase Failed).")
