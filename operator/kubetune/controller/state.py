"""The operator's in-memory view: the latest FineTuneJob, RayJob status and report per job.

Watch events for the three kinds arrive on separate streams and in any order; caching the
latest of each lets one status computation use all three without reading the API, and a
per-job lock makes that computation (and its single status write) one at a time per job.
Jobs are keyed by uid, not name: a job deleted and created again under the same name is a
new job, and nothing of the old one (a late report, a retry) can touch it.
Nothing here must survive a restart: a new process re-lists everything and re-derives it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.v1alpha1 import KIND, FineTuneJob, FineTuneJobStatus, PlanSummary
from kubetune.diagnosis import PodFacts, WarningEvent
from kubetune.report_checks import ReportReading

# Pods remembered per job: a job has a head, its workers and a submitter; deleted ones are
# kept (their last state explains a failure) until this many, oldest deleted dropped first.
MAX_PODS = 64

JobKey = str  # the FineTuneJob's uid


@dataclass
class Refusal:
    """Why the operator will not start a job: reason InvalidSpec or WillNotFit."""

    reason: str
    message: str


@dataclass
class JobState:
    body: dict[str, Any] | None = None
    parsed: tuple[int, FineTuneJob | Refusal] | None = None  # generation, result
    plan: PlanSummary | None = None  # planned at the parse, kept for every status write
    ensured: bool = False  # children created/adopted (or the job refused) by this process
    rayjob_status: dict[str, Any] | None = None
    rayjob_suspend: bool | None = None
    rayjob_gone: bool = False  # a DELETED event of our RayJob was seen
    rayjob_uid: str | None = None
    pods: dict[str, PodFacts] = field(default_factory=dict)  # by pod uid
    events: tuple[WarningEvent, ...] = ()  # Warning events about those pods, last read
    events_read_at: float = 0.0  # monotonic
    workload_active: bool | None = None  # the Kueue Workload's spec.active, as last known
    wake: asyncio.TimerHandle | None = None  # the next time-driven reconcile (stall, events)
    wake_task: asyncio.Future[None] | None = None  # kept so the loop cannot drop it
    report_text: str | None = None
    reading: tuple[str | None, ReportReading] | None = None  # report_text it was read from
    written: FineTuneJobStatus | None = None
    written_wire: dict[str, Any] | None = None  # the status as the API server holds it
    failures: int = 0
    retry_pending: bool = False
    retry_task: asyncio.Future[None] | None = None  # kept so the loop cannot drop it
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def observe_rayjob(self, rayjob: dict[str, Any]) -> None:
        """What the RayJob says: its status (the last one kept when it has none), suspend
        flag and uid (Kueue names its Workload by it)."""
        self.rayjob_status = rayjob.get("status") or self.rayjob_status
        self.rayjob_suspend = bool((rayjob.get("spec") or {}).get("suspend"))
        self.rayjob_uid = (rayjob.get("metadata") or {}).get("uid") or self.rayjob_uid

    def observe_pod(self, facts: PodFacts) -> bool:
        """Remember a pod's facts; False when nothing changed (no reconcile needed)."""
        if self.pods.get(facts.uid) == facts:
            return False
        self.pods[facts.uid] = facts
        deleted = [uid for uid, pod in self.pods.items() if pod.deleted]
        for uid in deleted[: max(0, len(self.pods) - MAX_PODS)]:
            del self.pods[uid]
        return True

    @property
    def name(self) -> str:
        meta = (self.body or {}).get("metadata") or {}
        return f"{meta.get('namespace')}/{meta.get('name')}"


@dataclass
class OperatorState:
    jobs: dict[JobKey, JobState] = field(default_factory=dict)

    def get(self, key: JobKey) -> JobState:
        return self.jobs.setdefault(key, JobState())

    def forget(self, key: JobKey) -> None:
        js = self.jobs.pop(key, None)
        if js is not None and js.wake is not None:
            js.wake.cancel()

    @property
    def phase_counts(self) -> Counter[str]:
        """Jobs per phase, from what each job's status is now (read or written): counted
        afresh, so a restart or a missed event can never skew it (or make it negative)."""
        return Counter(phase for js in self.jobs.values() if (phase := _phase_of(js)) is not None)


def _phase_of(js: JobState) -> str | None:
    if js.written is not None:
        return js.written.phase
    status = (js.body or {}).get("status") or {}
    return status.get("phase")


def owner_key(body: Any) -> JobKey | None:
    """The uid of the FineTuneJob that controls an owned object, from its ownerReferences."""
    meta = body.get("metadata") or {}
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == KIND and owner.get("controller") and owner.get("uid"):
            return str(owner["uid"])
    return None
