"""What the operator does for a FineTuneJob; the kopf handlers only route events here.

Level-triggered: every event of a job, its RayJob or its report ConfigMap leads to
`reconcile_job`, which compares what exists with what should and acts on the difference:
- the spec is parsed and checked once per generation; an invalid one gets phase Failed,
  reason InvalidSpec, a Warning event, and nothing is created;
- the report channel and the RayJob are created, or adopted when they already exist
  (after a restart), once per job incarnation (uid);
- RayJob spec.suspend follows runPolicy.suspend (never fighting Kueue's admission);
- the status is computed by the pure `map_rayjob_status` and written only when it changed,
  with an Event per phase change.
No progress is stored anywhere: a restarted operator re-lists the cluster and re-derives
everything, so there is no state that can be lost, pruned or go stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from kubetune.api.report import REPORT_KEY, TrainerReport
from kubetune.api.v1alpha1 import TERMINAL_PHASES, FineTuneJob, FineTuneJobStatus
from kubetune.builders.naming import rayjob_name, report_configmap_name
from kubetune.builders.rayjob import suspend_target
from kubetune.builders.render import owned_objects
from kubetune.config import OperatorConfig
from kubetune.controller import metrics
from kubetune.controller.kube import Kube, now_rfc3339
from kubetune.controller.state import JobKey, JobState, OperatorState
from kubetune.status_mapping import invalid_spec_status, map_rayjob_status
from kubetune.validation import SpecError, parse_finetunejob, semantic_problems

log = logging.getLogger("kubetune.operator")
RETRY_DELAYS = (1, 2, 5, 10, 30, 60)
BACKGROUND_MAX_WAIT = 2.0  # seconds; bounds how long status writes can be starved
T = TypeVar("T")


@dataclass
class Operator:
    """Clients, configuration and state, plus two thread pools for the blocking client.

    RayJob creation gets its own wide pool; every other write (report channel, status,
    events) shares a narrow one. Under a burst of new jobs the API server is the bottleneck,
    and this keeps "job created -> RayJob exists" short while the rest trails behind.
    """

    kube: Kube
    config: OperatorConfig
    state: OperatorState
    urgent: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(16, "rayjob"))
    background: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8, "writes"))
    urgent_in_flight: int = 0
    no_urgent: asyncio.Event = field(default_factory=asyncio.Event)


async def _io(op: Operator, fn: Callable[..., T], *args: Any, urgent: bool = False) -> T:
    """Run a blocking client call; other writes yield (up to BACKGROUND_MAX_WAIT) while
    RayJob creations are in flight, so a burst of new jobs gets its RayJobs first."""
    loop = asyncio.get_running_loop()
    if not urgent:
        if op.urgent_in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(op.no_urgent.wait(), BACKGROUND_MAX_WAIT)
        return await loop.run_in_executor(op.background, fn, *args)
    op.urgent_in_flight += 1
    op.no_urgent.clear()
    try:
        return await loop.run_in_executor(op.urgent, fn, *args)
    finally:
        op.urgent_in_flight -= 1
        if not op.urgent_in_flight:
            op.no_urgent.set()


# --------------------------------------------------------------------------- parsing


def check_job(body: dict[str, Any]) -> FineTuneJob | list[str]:
    """The parsed job, or every problem; on Kubernetes cluster-only problems are errors too."""
    try:
        job = parse_finetunejob({k: v for k, v in body.items() if k != "status"})
    except SpecError as error:
        return [str(p) for p in error.problems]
    problems = semantic_problems(job.spec)
    return [str(p) for p in problems] if problems else job


def cached_check(js: JobState, body: dict[str, Any]) -> FineTuneJob | list[str]:
    """Parse once per (uid, generation): the spec cannot change without a new generation."""
    meta = body["metadata"]
    uid, generation = str(meta.get("uid")), int(meta.get("generation") or 0)
    if js.parsed is None or js.parsed[:2] != (uid, generation):
        js.parsed = (uid, generation, check_job(body))
    return js.parsed[2]


def parse_report(configmap: dict[str, Any] | None) -> TrainerReport | None:
    """The trainer's report, or None when absent or unreadable (logged, never fatal)."""
    text = ((configmap or {}).get("data") or {}).get(REPORT_KEY)
    if not text:
        return None
    try:
        return TrainerReport.model_validate_json(text)
    except ValidationError as error:
        name = (configmap or {}).get("metadata", {}).get("name")
        log.warning("ignoring unreadable report in ConfigMap %s: %s", name, error)
        return None


def _status_of(body: dict[str, Any]) -> FineTuneJobStatus | None:
    try:
        raw = body.get("status")
        return FineTuneJobStatus.model_validate(raw) if raw else None
    except ValidationError:
        return None


def _merge_patch(new: FineTuneJobStatus, old: FineTuneJobStatus | None) -> dict[str, Any]:
    """A JSON merge patch turning old into new (keys that disappeared are set to null)."""
    patch: dict[str, Any] = new.to_wire()
    for key in old.to_wire() if old else {}:
        patch.setdefault(key, None)
    return patch


# --------------------------------------------------------------------------- reconcile


async def reconcile_job(op: Operator, key: JobKey) -> None:
    """Bring one job's children and status in line; on error, retry later with backoff."""
    js = op.state.get(key)
    try:
        async with js.lock:
            if js.body is not None:
                with metrics.timed("reconcile"):
                    await _reconcile_locked(op, js, js.body)
        js.failures = 0
    except Exception as error:
        delay = RETRY_DELAYS[min(js.failures, len(RETRY_DELAYS) - 1)]
        js.failures += 1
        log.warning("reconciling %s/%s failed (retry in %s s): %s", *key, delay, error)
        asyncio.get_running_loop().call_later(
            delay, lambda: asyncio.ensure_future(reconcile_job(op, key))
        )


async def _reconcile_locked(op: Operator, js: JobState, body: dict[str, Any]) -> None:
    checked = cached_check(js, body)
    if isinstance(checked, list):
        await _reject(op, js, body, checked)
        return
    uid = str(body["metadata"].get("uid"))
    if js.ensured_uid != uid:
        await ensure_children(op, js, checked)
        js.ensured_uid = uid
    elif js.rayjob_suspend is not None:
        await _sync_suspend(op, checked, js.rayjob_suspend)
    await _refresh(op, js, body, checked)


async def ensure_children(op: Operator, js: JobState, job: FineTuneJob) -> None:
    """Create the RayJob and the report channel, or adopt what a previous run created."""
    *channel, rayjob = owned_objects(job, op.config)
    # The RayJob first: it starts the slow part (the cluster). KubeRay retries pod creation
    # for the milliseconds until the ServiceAccount below exists.
    outcome = await _io(op, op.kube.ensure, rayjob, urgent=True)
    *independent, binding = channel
    # The RoleBinding last: without the `bind` verb the API server checks that the operator
    # holds everything the referenced Role grants, which needs the Role to exist.
    outcomes = await asyncio.gather(*(_io(op, op.kube.ensure, o) for o in independent))
    outcomes.append(await _io(op, op.kube.ensure, binding))
    metrics.WRITES.labels("create").inc([outcome, *outcomes].count("created"))
    if outcome == "adopted":
        existing = await _io(
            op,
            op.kube.read,
            "RayJob",
            job.metadata.namespace or "default",
            rayjob["metadata"]["name"],
        )
        if existing is not None:
            js.rayjob_status = existing.get("status") or js.rayjob_status
            await _sync_suspend(op, job, bool(existing.get("spec", {}).get("suspend")))


async def _sync_suspend(op: Operator, job: FineTuneJob, current: bool) -> None:
    target = suspend_target(job)
    if target is None or target == current:
        return
    name = rayjob_name(job.metadata.name)
    await _io(op, op.kube.set_rayjob_suspend, job.metadata.namespace or "default", name, target)
    metrics.WRITES.labels("suspend").inc()


async def _reject(op: Operator, js: JobState, body: dict[str, Any], problems: list[str]) -> None:
    previous = js.written or _status_of(body)
    generation = body["metadata"].get("generation")
    status = invalid_spec_status(generation, problems, previous, now_rfc3339())
    if previous is not None and previous.to_wire() == status.to_wire():
        js.written = previous
        return
    await _write(op, js, body, status, previous)


async def _refresh(op: Operator, js: JobState, body: dict[str, Any], job: FineTuneJob) -> None:
    previous = js.written or _status_of(body)
    status = map_rayjob_status(job, js.rayjob_status, js.report, previous, now_rfc3339())
    newly_terminal = status.phase in TERMINAL_PHASES and (
        previous is None or previous.phase not in TERMINAL_PHASES
    )
    if newly_terminal:
        # The RayJob and report watches are separate streams: read both fresh before a
        # verdict that can never change again.
        await _reload_children(op, js, job)
        status = map_rayjob_status(job, js.rayjob_status, js.report, previous, now_rfc3339())
    if previous is not None and previous.to_wire() == status.to_wire():
        js.written = previous
        return
    await _write(op, js, body, status, previous)


async def _reload_children(op: Operator, js: JobState, job: FineTuneJob) -> None:
    ns, name = job.metadata.namespace or "default", job.metadata.name
    rayjob, configmap = await asyncio.gather(
        _io(op, op.kube.read, "RayJob", ns, rayjob_name(name)),
        _io(op, op.kube.read, "ConfigMap", ns, report_configmap_name(name)),
    )
    if rayjob is not None:
        js.rayjob_status = rayjob.get("status")
    js.report = parse_report(configmap) or js.report


async def _write(
    op: Operator,
    js: JobState,
    body: dict[str, Any],
    status: FineTuneJobStatus,
    previous: FineTuneJobStatus | None,
) -> None:
    meta = body["metadata"]
    await _io(
        op, op.kube.patch_status, meta["namespace"], meta["name"], _merge_patch(status, previous)
    )
    metrics.WRITES.labels("status").inc()
    op.state.record(js, status)
    metrics.publish_phases(op.state.phase_counts)
    if previous is None or previous.phase != status.phase:
        await _announce(op, body, status)


async def _announce(op: Operator, body: dict[str, Any], status: FineTuneJobStatus) -> None:
    """One Event per phase change; failures are Warnings so `kubectl describe` flags them."""
    type_ = "Warning" if status.phase == "Failed" else "Normal"
    failed = next((c for c in status.conditions if c.type == "Failed" and c.status == "True"), None)
    reason = failed.reason if failed else status.phase
    message = f"{status.phase}: {status.message or ''}".strip()
    try:
        await _io(op, op.kube.post_event, body, type_, reason, message)
        metrics.WRITES.labels("event").inc()
    except Exception as error:  # an Event is best effort; the status already says it
        log.warning("could not post event for %s: %s", body["metadata"]["name"], error)
