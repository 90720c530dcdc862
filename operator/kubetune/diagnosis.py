"""Why a job's pods do not run, and what kind of failure a trainer error is. Pure.

KubeRay's own reasons describe its deployment (`AppFailed`, `PreRunningDeadlineExceeded`),
not the cause. The cause is written elsewhere, by the parts of Kubernetes that saw it:
- the scheduler: a pod condition `PodScheduled=False, reason Unschedulable` and a
  `FailedScheduling` event ("0/3 nodes are available: 3 node(s) didn't match ...");
- the kubelet: a container waiting in `ErrImagePull`/`ImagePullBackOff`/`ErrImageNeverPull`,
  or `CreateContainerConfigError` (a Secret or ConfigMap key that is not there); `FailedMount`
  events (a Secret or claim a volume needs); a container terminated `OOMKilled` (exit 137);
  a pod evicted for node pressure (`status.reason: Evicted`, e.g. scratch over its limit);
- the control plane: a `DisruptionTarget` condition on a pod preempted by the scheduler,
  deleted by the taint manager (node lost) or evicted through the API (e.g. Kueue, drains).
`diagnose` turns what the operator saw of a job's pods into one reason and a message naming
the pod; `classify_error` does the same for the trainer's error text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

from kubetune.api.report import TrainerErrorReason

PodReason = Literal[
    "OOMKilled", "Evicted", "Preempted", "ImagePullFailed", "PodConfigError", "Unschedulable"
]
# Most specific first: a pod OOM-killed after it was scheduled says more than an unschedulable
# sibling; an image that cannot be pulled on a scheduled pod more than one still pending.
POD_REASONS: tuple[str, ...] = get_args(PodReason)
# Causes that keep a cluster from starting, and causes that end a run that was running.
STARTING_REASONS = ("ImagePullFailed", "PodConfigError", "Unschedulable")
RUN_REASONS = ("OOMKilled", "Evicted", "Preempted")
TRAINER_ERROR_REASONS: tuple[str, ...] = get_args(TrainerErrorReason)

IMAGE_PULL_WAITING = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")
# No retry can succeed: the image may never be pulled, or its name is not an image name.
PERMANENT_WAITING = ("ErrImageNeverPull", "InvalidImageName")
CONFIG_WAITING = ("CreateContainerConfigError", "CreateContainerError")
CONFIG_EVENTS = ("FailedMount", "FailedAttachVolume")
DETAIL_LIMIT = 400

_OOM_TEXT = re.compile(
    r"out of memory|OutOfMemoryError|\bMemoryError\b|OOM[- ]?kill|running low on memory", re.I
)
_COLLECTIVE_TEXT = re.compile(
    r"collective operation timeout|Watchdog caught collective|"
    r"Timed out waiting \d+ ?ms for (?:recv|send)|"
    r"(?:NCCL|gloo|ProcessGroup\w*|DistBackendError)\b[^\n]{0,200}?\btimed? ?out",
    re.I,
)


@dataclass(frozen=True)
class PodFacts:
    """What matters of one pod for a diagnosis, extracted once per watch event."""

    name: str
    uid: str
    phase: str = ""
    deleted: bool = False
    unschedulable: str | None = None  # the scheduler's message
    waiting: tuple[str, str, str] | None = None  # container, reason, message
    terminated: tuple[str, str, int, str] | None = None  # container, reason, exit code, msg
    disruption: tuple[str, str] | None = None  # DisruptionTarget reason, message
    evicted: str | None = None  # the kubelet's eviction message
    created: str = ""  # metadata.creationTimestamp (RFC 3339): which attempt it belongs to


@dataclass(frozen=True)
class WarningEvent:
    """A Warning event about one of the job's pods."""

    pod_uid: str
    reason: str
    message: str


@dataclass(frozen=True)
class Diagnosis:
    reason: PodReason
    message: str
    permanent: bool = False  # waiting longer cannot help: fail now


def _cut(text: Any) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 3] + "..."


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def _containers(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _waiting(status: dict[str, Any]) -> tuple[str, str, str] | None:
    for c in _containers(status):
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in (*IMAGE_PULL_WAITING, *CONFIG_WAITING):
            return c.get("name", ""), waiting["reason"], _cut(waiting.get("message") or "")
    return None


def _terminated(status: dict[str, Any]) -> tuple[str, str, int, str] | None:
    """An OOM kill now or before the last restart (worker containers restart in place)."""
    for c in _containers(status):
        for state in (c.get("state") or {}, c.get("lastState") or {}):
            done = state.get("terminated") or {}
            code = int(done.get("exitCode") or 0)
            # Exit 137 alone is any SIGKILL (a liveness probe, a grace period run out): only
            # the kubelet's OOMKilled says the kernel killed it for memory.
            if done.get("reason") == "OOMKilled":
                return c.get("name", ""), "OOMKilled", code, _cut(done.get("message") or "")
    return None


def pod_facts(pod: dict[str, Any], deleted: bool = False) -> PodFacts:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    scheduled = _condition(status, "PodScheduled") or {}
    disruption = _condition(status, "DisruptionTarget") or {}
    unschedulable = (
        _cut(scheduled.get("message") or "no node fits")
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
        else None
    )
    return PodFacts(
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        phase=str(status.get("phase") or ""),
        deleted=deleted,
        unschedulable=unschedulable,
        waiting=_waiting(status),
        terminated=_terminated(status),
        disruption=(
            (str(disruption.get("reason") or ""), _cut(disruption.get("message") or ""))
            if disruption.get("status") == "True"
            else None
        ),
        evicted=_cut(status.get("message") or "") if status.get("reason") == "Evicted" else None,
        created=str(meta.get("creationTimestamp") or ""),
    )


def warning_event(event: dict[str, Any]) -> WarningEvent | None:
    """A core/v1 Event about a pod, if it is a Warning."""
    involved = event.get("involvedObject") or event.get("involved_object") or {}
    if event.get("type") != "Warning" or involved.get("kind") != "Pod":
        return None
    return WarningEvent(
        str(involved.get("uid") or ""), str(event.get("reason") or ""), _cut(event.get("message"))
    )


def _pod_findings(pod: PodFacts) -> Iterator[Diagnosis]:
    """This pod's own causes, from its status alone."""
    if pod.terminated is not None and pod.disruption is None:
        container, reason, code, _ = pod.terminated
        yield Diagnosis(
            "OOMKilled",
            f"container {container} of pod {pod.name} was killed for memory "
            f"({reason}, exit code {code})",
        )
    if pod.evicted is not None:
        yield Diagnosis("Evicted", f"the kubelet evicted pod {pod.name}: {pod.evicted}")
    if pod.disruption is not None:
        reason, message = pod.disruption
        yield Diagnosis("Preempted", f"pod {pod.name} was disrupted ({reason}): {message}")
    if pod.waiting is not None:
        container, reason, message = pod.waiting
        kind: PodReason = "ImagePullFailed" if reason in IMAGE_PULL_WAITING else "PodConfigError"
        yield Diagnosis(
            kind,
            f"container {container} of pod {pod.name} cannot start ({reason}): {message}",
            permanent=reason in PERMANENT_WAITING,
        )
    if pod.unschedulable is not None:
        yield Diagnosis("Unschedulable", f"pod {pod.name} cannot be scheduled: {pod.unschedulable}")


def _event_findings(pod: PodFacts, events: list[WarningEvent]) -> Iterator[Diagnosis]:
    """What the kubelet and scheduler said in events and not in the pod's status."""
    if pod.phase not in ("", "Pending"):
        return  # an event from before it started (a mount retried, a pull that then worked)
    for event in events:
        if event.pod_uid != pod.uid:
            continue
        if event.reason in CONFIG_EVENTS:
            yield Diagnosis(
                "PodConfigError", f"pod {pod.name} cannot start ({event.reason}): {event.message}"
            )
        elif event.reason == "Failed" and "pull" in event.message.lower():
            yield Diagnosis(
                "ImagePullFailed", f"pod {pod.name} cannot pull its image: {event.message}"
            )
        elif event.reason == "FailedScheduling":
            yield Diagnosis("Unschedulable", f"pod {pod.name} cannot be scheduled: {event.message}")


def diagnose(
    pods: Iterable[PodFacts],
    events: Iterable[WarningEvent] = (),
    reasons: tuple[str, ...] = POD_REASONS,
    live_only: bool = False,
    since: str = "",
) -> Diagnosis | None:
    """The most specific cause among `reasons` (POD_REASONS order) that the job's pods show,
    or None. `live_only` leaves out pods already deleted, `since` (RFC 3339) pods made
    before it: causes of an earlier attempt.

    The message names the first pod with that cause and how many others share it.
    """
    events = list(events)
    findings: list[Diagnosis] = []
    for pod in sorted(pods, key=lambda p: p.name):
        if (live_only and pod.deleted) or (since and pod.created and pod.created < since):
            continue
        own = [d for d in _pod_findings(pod) if d.reason in reasons]
        own = own or [d for d in _event_findings(pod, events) if d.reason in reasons]
        if own:
            findings.append(min(own, key=lambda d: POD_REASONS.index(d.reason)))
    if not findings:
        return None
    first = min(findings, key=lambda d: POD_REASONS.index(d.reason))
    others = sum(1 for d in findings if d.reason == first.reason) - 1
    more = f" (and {others} more pod{'s' if others > 1 else ''})" if others else ""
    return Diagnosis(first.reason, first.message + more, first.permanent)


def classify_error(text: str | None) -> TrainerErrorReason | None:
    """The kind of a trainer error from its text (the trainer's own classification wins)."""
    if not text:
        return None
    for reason in ("DataError", "ScorerError"):
        if text.startswith(f"{reason}:"):
            return reason
    if _COLLECTIVE_TEXT.search(text):
        return "CollectiveTimeout"
    if _OOM_TEXT.search(text):
        return "OOMKilled"
    return None
