"""What the operator does for a FineTuneJob; the kopf handlers only route events here.

Level-triggered: every event of a job, its RayJob or its FineTuneJobReport leads to
`reconcile_job`, which compares what exists with what should and acts on the difference:
- the spec is parsed, checked and planned (`kubetune plan`) once per generation; an invalid
  one gets phase Failed, reason InvalidSpec, one that will not fit reason WillNotFit (unless
  runPolicy.skipFitCheck), a Warning event, and nothing is created; the plan is kept in
  `.status.plan`;
- a finished job (Succeeded or Failed) is left alone for good: nothing is created, adopted,
  patched or deleted for it, whatever is missing, by any operator instance;
- the report channel and the RayJob are created, or adopted when they are ours (controller
  ownerReference with this job's uid), once per job and process. The RayJob is created only
  while the status holds no `rayJob` yet: once it was created, a missing RayJob is a
  RayJob deleted under a running job, which ends the job (RayJobDeleted) instead of
  training again from scratch (see `Problem` in status_mapping for every such case);
- RayJob spec.suspend follows runPolicy.suspend; with runPolicy.queueName Kueue owns it, and
  runPolicy.suspend sets the Kueue Workload's spec.active instead (Kueue's documented way to
  stop an admitted job: it suspends the RayJob itself, so the flag flips once per change);
- the job's pods (watched) and, for a pod pending without a cause in its status, its Warning
  events (read at most every EVENTS_INTERVAL_S) explain a job that cannot start or failed
  (kubetune.diagnosis); a time-driven reconcile marks a trainer without progress Stalled;
- the status is computed by the pure `map_rayjob_status` and written only when it changed,
  whole (no stale keys can remain) and only onto this incarnation of the job (the write
  tests the uid), with an Event per phase change;
- errors: the API's answer reaches the status and a Warning event; permanent ones (the
  object or request is wrong) are not retried, transient ones back off with at most one
  pending retry per job; every request has a timeout (controller/kube.py).
No progress is stored anywhere: a restarted operator re-lists the cluster and re-derives
everything from the objects and their status, so there is no state that can be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from kubetune.api.report import REPORT_FIELD, REPORT_KIND
from kubetune.api.v1alpha1 import TERMINAL_PHASES, FineTuneJob, FineTuneJobStatus, PlanSummary
from kubetune.builders.meta import namespace_of, uid_of
from kubetune.builders.naming import rayjob_name, report_name
from kubetune.builders.rayjob import kuberay_too_old, suspend_target
from kubetune.builders.render import owned_objects
from kubetune.config import OperatorConfig
from kubetune.controller import metrics
from kubetune.controller.kube import (
    Kube,
    NameConflictError,
    api_message,
    api_status,
    check_owner,
    controller_uid,
    is_permanent,
    now_rfc3339,
)
from kubetune.controller.state import JobKey, JobState, OperatorState, Refusal
from kubetune.diagnosis import STARTING_REASONS, PodFacts, diagnose, pod_facts, warning_event
from kubetune.planning import (
    SKIP_FIT_CHECK_HINT,
    build_plan,
    plan_summary,
    refused_for_fit,
    shape_of,
)
from kubetune.report_checks import ReportReading, read_report
from kubetune.status_mapping import (
    TERMINAL_DEPLOYMENTS,
    WARNING_REASONS,
    Observation,
    Problem,
    headline_reason,
    map_rayjob_status,
    refused_status,
    seconds_to_stall,
    stall_message,
)
from kubetune.validation import SpecError, parse_finetunejob, semantic_problems

log = logging.getLogger("kubetune.operator")
RETRY_DELAYS = (1, 2, 5, 10, 30, 60)
# Failures the operator decides itself while KubeRay may still run the RayJob.
OWN_VERDICTS = (
    "Diverged",
    "InvalidReport",
    "NameConflict",
    "CreateRejected",
    "KubeRayTooOld",
    "Stalled",
    "ImagePullFailed",
)
# How often the Warning events of a pod pending without a visible cause are read again.
EVENTS_INTERVAL_S = 30.0
MAX_PODS_ASKED = 8  # event reads per job and round: a job has a head and a few workers
BACKGROUND_MAX_WAIT = 2.0  # seconds; bounds how long status writes can be starved
T = TypeVar("T")


@dataclass
class Operator:
    """Clients, configuration and state, plus two thread pools for the blocking client.

    RayJob creation gets its own pool; every other call (report channel, status, events)
    shares the other and yields while RayJobs are being created. Under a burst of new jobs
    the API server is the bottleneck, and this keeps "job created -> RayJob exists" short
    while the rest trails behind (bench/bench_operator.py: 16 threads each measured best).
    """

    kube: Kube
    config: OperatorConfig
    state: OperatorState
    urgent: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(16, "rayjob"))
    background: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(16, "writes"))
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


def check_job(body: dict[str, Any]) -> FineTuneJob | Refusal:
    """The parsed job, or every problem; on Kubernetes cluster-only problems are errors too."""
    try:
        job = parse_finetunejob({k: v for k, v in body.items() if k != "status"})
    except SpecError as error:
        problems = [str(p) for p in error.problems]
    else:
        problems = [str(p) for p in semantic_problems(job.spec)]
    return Refusal("InvalidSpec", "invalid spec: " + "; ".join(problems)) if problems else job


def plan_refusal(job: FineTuneJob, plan: PlanSummary) -> Refusal | None:
    """WillNotFit before any pod starts, unless the spec says to run it anyway."""
    if not refused_for_fit(plan.verdict, job.spec):
        return None
    remedy = f"; remedy: {plan.remedy}" if plan.remedy else ""
    return Refusal(
        "WillNotFit",
        f"will not fit: {plan.message}{remedy} (kubetune plan shows the whole plan; "
        f"{SKIP_FIT_CHECK_HINT})",
    )


def cached_check(
    js: JobState, body: dict[str, Any], config: OperatorConfig
) -> FineTuneJob | Refusal:
    """Parse and plan once per generation (state is per uid): the spec cannot change without one."""
    generation = int(body["metadata"].get("generation") or 0)
    if js.parsed is None or js.parsed[0] != generation:
        checked = check_job(body)
        if isinstance(checked, FineTuneJob):
            shape = shape_of(checked.spec.model.name)
            js.plan = plan_summary(build_plan(checked.spec, shape, config))
            checked = plan_refusal(checked, js.plan) or checked
        js.parsed = (generation, checked)
    return js.parsed[1]


def report_text(report: dict[str, Any] | None) -> str | None:
    """The report document of a FineTuneJobReport; None while the trainer has written none."""
    text = (report or {}).get(REPORT_FIELD)
    return text if isinstance(text, str) and text else None


def reading_of(js: JobState, job: FineTuneJob) -> ReportReading:
    """The job's report as the operator accepts it (report_checks), read once per text."""
    if js.reading is None or js.reading[0] != js.report_text:
        reading = read_report(js.report_text, job)
        if reading.note:
            level = logging.WARNING if reading.report is None else logging.DEBUG
            log.log(level, "report of %s: %s", js.name, reading.note)
        js.reading = (js.report_text, reading)
    return js.reading[1]


def _status_of(raw: dict[str, Any] | None) -> FineTuneJobStatus | None:
    try:
        return FineTuneJobStatus.model_validate(raw) if raw else None
    except ValidationError:
        return None


# --------------------------------------------------------------------------- reconcile


async def reconcile_job(op: Operator, key: JobKey) -> None:
    """Bring one job's children and status in line; transient errors retry with backoff."""
    js = op.state.jobs.get(key)
    if js is None:
        return
    try:
        async with js.lock:
            retry = False
            if js.body is not None and not (js.body["metadata"].get("deletionTimestamp")):
                with metrics.timed("reconcile"):
                    retry = await _reconcile_locked(op, js, js.body)
    except Exception as error:
        if is_permanent(error):
            log.error("reconciling %s failed, not retried: %s", js.name, api_message(error))
            return
        log.warning("reconciling %s failed: %s", js.name, api_message(error))
        retry = True
    if retry:
        _schedule_retry(op, key, js)
    else:
        js.failures = 0
    _schedule_wake(op, key, js)


def _schedule_wake(op: Operator, key: JobKey, js: JobState) -> None:
    """A reconcile driven by time, not events: when the trainer would count as stalled, and
    while a pod is pending without a visible cause (its events are read then)."""
    if js.wake is not None:
        js.wake.cancel()
        js.wake = None
    # A pending retry reconciles (and schedules again) anyway, with its own backoff: a stall
    # whose status write keeps failing must not turn into a reconcile every second.
    delay = None if js.retry_pending else _wake_delay(op, js)
    if delay is None:
        return

    def fire() -> None:
        js.wake = None
        if op.state.jobs.get(key) is js:
            js.wake_task = asyncio.ensure_future(reconcile_job(op, key))

    js.wake = asyncio.get_running_loop().call_later(delay, fire)


def _wake_delay(op: Operator, js: JobState) -> float | None:
    status, parsed = js.written, js.parsed
    if status is None or status.phase in TERMINAL_PHASES or parsed is None:
        return None
    job = parsed[1]
    if not isinstance(job, FineTuneJob):
        return None
    delays = [EVENTS_INTERVAL_S] if _unexplained_pending(js) else []
    report = js.reading[1].report if js.reading is not None else None
    stall_in = seconds_to_stall(status, report, _stall_timeout(op, job), now_rfc3339())
    if stall_in is not None:
        delays.append(max(1.0, stall_in + 1))
    return min(delays) if delays else None


def _stall_timeout(op: Operator, job: FineTuneJob) -> int | None:
    return op.config.stall_timeout(job.spec.run_policy.stall_timeout_seconds)


def _unexplained_pending(js: JobState) -> list[PodFacts]:
    """Live pods that wait to start while their status names no cause."""
    return [
        pod
        for pod in js.pods.values()
        if not pod.deleted
        and pod.phase in ("", "Pending")
        and diagnose([pod], (), STARTING_REASONS) is None
    ]


async def _read_pod_events(op: Operator, js: JobState, job: FineTuneJob, force: bool) -> None:
    """The Warning events of pods pending without a visible cause (a FailedMount of a missing
    Secret shows nowhere else); at most every EVENTS_INTERVAL_S unless `force`."""
    pods = _unexplained_pending(js)[:MAX_PODS_ASKED]
    if not pods:
        js.events = ()  # what they said is history once every pod started or says why
        return
    if not force and time.monotonic() - js.events_read_at < EVENTS_INTERVAL_S:
        return
    js.events_read_at = time.monotonic()
    try:
        answers = await asyncio.gather(
            *(_io(op, op.kube.pod_warnings, namespace_of(job), pod.uid) for pod in pods)
        )
    except Exception as error:  # an explanation is best effort; the phase does not need it
        log.warning("could not read the pod events of %s: %s", js.name, api_message(error))
        return
    found = (warning_event(raw) for items in answers for raw in items)
    js.events = tuple(event for event in found if event is not None)


def _schedule_retry(op: Operator, key: JobKey, js: JobState) -> None:
    """At most one pending retry per job: events that arrive meanwhile reconcile anyway."""
    if js.retry_pending:
        return
    delay = RETRY_DELAYS[min(js.failures, len(RETRY_DELAYS) - 1)]
    js.failures += 1
    js.retry_pending = True
    log.info("retrying %s in %s s", js.name, delay)

    def fire() -> None:
        js.retry_pending = False
        if op.state.jobs.get(key) is js:
            js.retry_task = asyncio.ensure_future(reconcile_job(op, key))

    asyncio.get_running_loop().call_later(delay, fire)


def _previous(js: JobState, body: dict[str, Any]) -> FineTuneJobStatus | None:
    """The status as last written by this process, else as the API server holds it."""
    if js.written is None:
        js.written_wire = body.get("status") or None
        js.written = _status_of(js.written_wire)
    return js.written


def _finished(js: JobState, body: dict[str, Any]) -> bool:
    """Terminal by what this process wrote or by what the API server holds (another replica
    may have finished it, and a status this version cannot parse still has its phase)."""
    phase = ((body.get("status") or {}).get("phase"), js.written.phase if js.written else None)
    return any(p in TERMINAL_PHASES for p in phase)


async def _reconcile_locked(op: Operator, js: JobState, body: dict[str, Any]) -> bool:
    """One pass; True when a transient problem asks for a retry."""
    if _finished(js, body):
        return False  # finished stays finished: nothing is created, adopted or written
    checked = cached_check(js, body, op.config)
    if isinstance(checked, Refusal):
        await _reject(op, js, body, checked)
        return False
    previous = _previous(js, body)
    problem = None
    retry_suspend = False
    deferred = not js.ensured and _creation_deferred(js, checked)
    if deferred:
        pass  # nothing to create yet: the status says Suspended
    elif not js.ensured:
        problem = await ensure_children(op, js, checked, previous)
        js.ensured = problem is None or not problem.transient
    else:
        retry_suspend = await _sync_suspend(op, js, checked)
    reading = reading_of(js, checked)
    problem = problem or reading.problem or _deleted_problem(js, checked)
    await _refresh(op, js, body, checked, reading, problem, created=not deferred)
    return retry_suspend or (problem is not None and problem.transient)


def _creation_deferred(js: JobState, job: FineTuneJob) -> bool:
    """A queued job suspended before its RayJob exists waits without one: Kueue could admit
    (and so unsuspend) a new RayJob before its Workload is deactivated. Once created (status
    rayJob), a suspension goes through the Workload."""
    policy = job.spec.run_policy
    created = bool((js.written_wire or {}).get("rayJob"))
    return bool(policy.queue_name and policy.suspend and not created)


def _deleted_problem(js: JobState, job: FineTuneJob) -> Problem | None:
    """A RayJob gone before it finished (a terminal last status is mapped as it is)."""
    deployment = (js.rayjob_status or {}).get("jobDeploymentStatus")
    if not js.rayjob_gone or deployment in TERMINAL_DEPLOYMENTS:
        return None
    return Problem(
        "RayJobDeleted",
        f"the RayJob {namespace_of(job)}/{rayjob_name(job.metadata.name)} was deleted "
        f"before the run finished (last deployment status: {deployment or 'none'})",
    )


async def ensure_children(
    op: Operator, js: JobState, job: FineTuneJob, previous: FineTuneJobStatus | None
) -> Problem | None:
    """Create the RayJob and the report channel, or adopt what this job created before.

    The RayJob is created only if the status says it never was (no `rayJob` yet); after
    that, a missing one was deleted under the job and is never created again.
    """
    network_policy, *channel, rayjob = owned_objects(job, op.config)
    # From the raw status: also when this version cannot parse it (`previous` is None then).
    created_before = bool((js.written_wire or {}).get("rayJob"))
    rayjob_exists = False
    try:
        # Before the RayJob: its pods are never reachable without the policy.
        await _ensure(op, network_policy, urgent=not created_before)
        if created_before:
            await _find_rayjob(op, js, job, rayjob, previous)
        else:
            # The RayJob first: it starts the slow part (the cluster). KubeRay retries pod
            # creation for the milliseconds until the ServiceAccount below exists.
            if await _ensure(op, rayjob, urgent=True) == "adopted":
                existing = await _io(
                    op, op.kube.read, "RayJob", namespace_of(job), rayjob["metadata"]["name"]
                )
                if existing is not None:
                    js.observe_rayjob(existing)
            await _sync_suspend(op, js, job)
        rayjob_exists = not js.rayjob_gone
        *independent, binding = channel
        await asyncio.gather(*(_ensure(op, o) for o in independent))
        # The RoleBinding last: without the `bind` verb the API server checks that the
        # operator holds everything the referenced Role grants, which needs the Role.
        await _ensure(op, binding)
    except _ChildError as error:
        # A report-channel object that failed after the RayJob exists: the status must still
        # record the RayJob, so that it is never created a second time.
        return dataclasses.replace(error.problem, rayjob_exists=rayjob_exists)
    return None


async def _find_rayjob(
    op: Operator,
    js: JobState,
    job: FineTuneJob,
    wanted: dict[str, Any],
    previous: FineTuneJobStatus | None,
) -> None:
    """After a restart: the RayJob this job created, or the fact that it is gone."""
    existing = await _io(op, op.kube.read, "RayJob", namespace_of(job), wanted["metadata"]["name"])
    if existing is None:
        js.rayjob_gone = True
        ref = previous.ray_job if previous is not None else None
        if js.rayjob_status is None and ref is not None:
            js.rayjob_status = {
                "jobDeploymentStatus": ref.deployment_status or "",
                "jobStatus": ref.job_status or "",
            }
        return
    try:
        check_owner(wanted, existing)
    except NameConflictError as error:
        raise _ChildError(Problem("NameConflict", str(error))) from None
    js.observe_rayjob(existing)
    await _sync_suspend(op, js, job)


class _ChildError(Exception):
    def __init__(self, problem: Problem):
        super().__init__(problem.message)
        self.problem = problem


async def _ensure(op: Operator, obj: dict[str, Any], urgent: bool = False) -> str:
    """kube.ensure, with its failure turned into the Problem the status will show."""
    what = f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"
    try:
        outcome = await _io(op, op.kube.ensure, obj, urgent=urgent)
    except NameConflictError as error:
        raise _ChildError(Problem("NameConflict", str(error))) from None
    except Exception as error:
        message = api_message(error)
        too_old = kuberay_too_old(message) if obj["kind"] == "RayJob" else None
        if api_status(error) == 400 and too_old:
            raise _ChildError(Problem("KubeRayTooOld", f"{too_old} ({message})")) from None
        if api_status(error) in (400, 422):
            raise _ChildError(
                Problem("CreateRejected", f"the API server refused {what}: {message}")
            ) from None
        raise _ChildError(Problem("CreateFailed", f"could not create {what}: {message}")) from None
    if outcome == "created":
        metrics.WRITES.labels("create").inc()
    return outcome


async def _sync_suspend(op: Operator, js: JobState, job: FineTuneJob) -> bool:
    """runPolicy.suspend onto the RayJob, or onto Kueue's Workload for a queued job; True
    when it must be tried again (Kueue has not made the Workload yet)."""
    if js.rayjob_gone:
        return False
    if job.spec.run_policy.queue_name:
        return await _sync_workload(op, js, job)
    target = suspend_target(job)
    if js.rayjob_suspend is None or target is None or target == js.rayjob_suspend:
        return False
    name = rayjob_name(job.metadata.name)
    await _io(op, op.kube.set_rayjob_suspend, namespace_of(job), name, target)
    metrics.WRITES.labels("suspend").inc()
    return False


async def _sync_workload(op: Operator, js: JobState, job: FineTuneJob) -> bool:
    """Kueue unsuspends an admitted RayJob whatever else sets its spec.suspend, so a queued
    job is suspended and resumed through its Workload's spec.active (once per change, and
    read once per process when nothing asked for a change: a resume may have been missed)."""
    wanted = not job.spec.run_policy.suspend
    if js.workload_active == wanted or js.rayjob_uid is None:
        return False  # no uid yet: the RayJob's first watch event reconciles again
    workloads = await _io(op, op.kube.workloads_of, namespace_of(job), js.rayjob_uid)
    if not workloads:
        return not wanted  # a suspension waits for Kueue to make the Workload
    for workload in workloads:
        if bool((workload.get("spec") or {}).get("active", True)) != wanted:
            await _io(op, op.kube.set_workload_active, workload, wanted)
            metrics.WRITES.labels("workload").inc()
    js.workload_active = wanted
    return False


async def _reject(op: Operator, js: JobState, body: dict[str, Any], refusal: Refusal) -> None:
    previous = _previous(js, body)
    generation = body["metadata"].get("generation")
    status = refused_status(generation, refusal.reason, refusal.message, previous, now_rfc3339())
    status = _with_plan(status, js)
    if previous is not None and previous.to_wire() == status.to_wire():
        return
    await _write(op, js, body, status, previous)


async def _refresh(
    op: Operator,
    js: JobState,
    body: dict[str, Any],
    job: FineTuneJob,
    reading: ReportReading,
    problem: Problem | None,
    created: bool = True,
) -> None:
    previous = js.written

    def mapped(reading: ReportReading, problem: Problem | None) -> FineTuneJobStatus:
        seen = _seen(op, js, job, created)
        return map_rayjob_status(
            job, js.rayjob_status, reading.report, previous, now_rfc3339(), problem, seen
        )

    await _read_pod_events(op, js, job, force=False)
    status = mapped(reading, problem)
    if status.phase in TERMINAL_PHASES and problem is None:
        # The RayJob and report watches are separate streams: read both fresh before a
        # verdict that can never change again (and the events of pods that never started).
        await _reload_children(op, js, job)
        await _read_pod_events(op, js, job, force=True)
        reading = reading_of(js, job)
        status = mapped(reading, reading.problem or _deleted_problem(js, job))
    status = _with_plan(status, js)
    if previous is not None and previous.to_wire() == status.to_wire():
        return
    if status.phase == "Failed" and not js.rayjob_gone:
        # Before the verdict: once it is written the job is never touched again, so a
        # failed delete must leave the job open for the retry.
        await _stop_run(op, job, status)
    await _write(op, js, body, status, previous)


def _seen(op: Operator, js: JobState, job: FineTuneJob, created: bool) -> Observation:
    return Observation(
        tuple(js.pods.values()), js.events, _stall_timeout(op, job), rayjob_created=created
    )


def _with_plan(status: FineTuneJobStatus, js: JobState) -> FineTuneJobStatus:
    """The admission plan rides along every status write (set once, never recomputed)."""
    if status.plan is not None or js.plan is None:
        return status
    return status.model_copy(update={"plan": js.plan})


async def _stop_run(op: Operator, job: FineTuneJob, status: FineTuneJobStatus) -> None:
    """A verdict of the operator's own (the run diverged, its report is refused, its report
    channel could not be created) ends a run KubeRay still considers alive: delete our
    RayJob (never another owner's) so the GPUs are freed."""
    reason = headline_reason(status)
    uid = uid_of(job)
    deployment = status.ray_job.deployment_status if status.ray_job else None
    if reason not in OWN_VERDICTS or deployment in TERMINAL_DEPLOYMENTS:
        return
    name = rayjob_name(job.metadata.name)
    existing = await _io(op, op.kube.read, "RayJob", namespace_of(job), name)
    if existing is None or uid is None or controller_uid(existing) != uid:
        return
    await _io(op, op.kube.delete_rayjob, namespace_of(job), name, existing["metadata"]["uid"])
    metrics.WRITES.labels("delete").inc()


async def _reload_children(op: Operator, js: JobState, job: FineTuneJob) -> None:
    ns, name = namespace_of(job), job.metadata.name
    rayjob, report, _ = await asyncio.gather(
        _io(op, op.kube.read, "RayJob", ns, rayjob_name(name)),
        _io(op, op.kube.read, REPORT_KIND, ns, report_name(name)),
        _reload_pods(op, js, job),
    )
    if rayjob is not None:
        js.rayjob_status = rayjob.get("status")
    if report is not None and controller_uid(report) == uid_of(job):
        js.report_text = report_text(report) or js.report_text


async def _reload_pods(op: Operator, js: JobState, job: FineTuneJob) -> None:
    """The pods as they are now (their watch is a third stream): they name the cause."""
    uid = uid_of(job)
    if uid is None:
        return
    try:
        pods = await _io(op, op.kube.job_pods, namespace_of(job), uid)
    except Exception as error:  # a cause is best effort; the verdict does not need it
        log.warning("could not list the pods of %s: %s", js.name, api_message(error))
        return
    for pod in pods:
        js.observe_pod(pod_facts(pod))


async def _write(
    op: Operator,
    js: JobState,
    body: dict[str, Any],
    status: FineTuneJobStatus,
    previous: FineTuneJobStatus | None,
) -> None:
    meta = body["metadata"]
    wire = status.to_wire()
    await _io(op, op.kube.replace_status, meta["namespace"], meta["name"], str(meta["uid"]), wire)
    metrics.WRITES.labels("status").inc()
    js.written, js.written_wire = status, wire
    metrics.publish_phases(op.state.phase_counts)
    reason = headline_reason(status)
    if (
        previous is None
        or previous.phase != status.phase
        or (reason in WARNING_REASONS and headline_reason(previous) != reason)
    ):
        await _announce(op, body, status, reason)
    stalled = stall_message(status)
    # A job failed for its stall was announced above, as a failure.
    if stalled and not stall_message(previous) and status.phase not in TERMINAL_PHASES:
        await _announce(op, body, status, "Stalled", f"Stalled: {stalled}")


async def _announce(
    op: Operator,
    body: dict[str, Any],
    status: FineTuneJobStatus,
    reason: str,
    message: str | None = None,
) -> None:
    """One Event per phase change (and per new warning or stall); failures and warnings
    are Warnings so `kubectl describe` flags them."""
    warning = status.phase == "Failed" or reason in (*WARNING_REASONS, "Stalled")
    message = message or f"{status.phase}: {status.message or ''}".strip()
    try:
        await _io(
            op,
            op.kube.post_event,
            body,
            "Warning" if warning else "Normal",
            reason if warning else status.phase,
            message,
        )
        metrics.WRITES.labels("event").inc()
    except Exception as error:  # an Event is best effort; the status already says it
        log.warning("could not post event for %s: %s", body["metadata"]["name"], api_message(error))
