"""The operator's in-memory view: the latest FineTuneJob, RayJob status and report per job.

Watch events for the three kinds arrive on separate streams and in any order; caching the
latest of each lets one status computation use all three without reading the API, and a
per-job lock makes that computation (and its single status write) one at a time per job.
Nothing here must survive a restart: a new process re-lists everything and re-derives it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.report import TrainerReport
from kubetune.api.v1alpha1 import KIND, FineTuneJob, FineTuneJobStatus

JobKey = tuple[str, str]  # namespace, FineTuneJob name


@dataclass
class JobState:
    body: dict[str, Any] | None = None
    parsed: tuple[str, int, FineTuneJob | list[str]] | None = None  # uid, generation, result
    ensured_uid: str | None = None  # children created/adopted for this incarnation
    rayjob_status: dict[str, Any] | None = None
    rayjob_suspend: bool | None = None
    report: TrainerReport | None = None
    written: FineTuneJobStatus | None = None
    failures: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class OperatorState:
    jobs: dict[JobKey, JobState] = field(default_factory=dict)
    phase_counts: Counter[str] = field(default_factory=Counter)

    def get(self, key: JobKey) -> JobState:
        return self.jobs.setdefault(key, JobState())

    def forget(self, key: JobKey) -> None:
        js = self.jobs.pop(key, None)
        if js is not None and js.written is not None:
            self.phase_counts[js.written.phase] -= 1

    def record(self, js: JobState, status: FineTuneJobStatus) -> None:
        """Remember what was written, keeping the per-phase counts for the metrics."""
        if js.written is not None:
            self.phase_counts[js.written.phase] -= 1
        self.phase_counts[status.phase] += 1
        js.written = status


def owner_key(body: Any) -> JobKey | None:
    """The FineTuneJob that controls an owned object, from its ownerReferences."""
    meta = body.get("metadata") or {}
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == KIND and owner.get("controller"):
            return str(meta.get("namespace")), str(owner.get("name"))
    return None
