"""Map KubeRay RayJob status + the trainer's report onto FineTuneJob.status. Pure.

Rules that come from KubeRay's history (v1.1 to v1.7):
- `jobDeploymentStatus: Complete` means the Ray job reached *a* terminal state, not success:
  only `jobStatus: SUCCEEDED` is success (STOPPED, FAILED or a stale value are failures).
- `Failed` and `ValidationFailed` are terminal; `Retrying` (1.2+) is not a failure, it is a
  new attempt on a new cluster.
- After a deployment failure `jobStatus` may still say RUNNING (never refreshed): the phase
  follows the deployment status, and the message says the job status is stale.
- Success also needs results: a best checkpoint in the report, and evaluation scores when
  evaluation is enabled; otherwise the job failed, and the reason says what is missing.
- Once Succeeded or Failed the phase never changes again (KubeRay's TTL deletes the cluster,
  and a later read must not resurrect the run).
- A failure's reason is its cause where one is known (kubetune.diagnosis): the trainer's own
  kind of error first (OOMKilled, DataError, ScorerError, CollectiveTimeout), then what the pods show
  (OOMKilled, Evicted, Preempted, ImagePullFailed, PodConfigError, Unschedulable), and only
  then KubeRay's reason. While the cluster starts, a pod's cause is the Running condition's
  reason; one that waiting cannot cure (an image that may never be pulled) fails the job.
- A running job whose trainer made no progress for the stall timeout is Stalled (a
  condition; Failed, reason Stalled, with runPolicy.failOnStall); progress clears it.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from kubetune.api.base import cut_text
from kubetune.api.credentials import redact
from kubetune.api.report import PER_JOB_STORAGE_SINCE, TrainerReport
from kubetune.api.v1alpha1 import (
    MESSAGE_LIMIT,
    TERMINAL_PHASES,
    Condition,
    EpochMetrics,
    EvaluationResult,
    FineTuneJob,
    FineTuneJobStatus,
    Phase,
    Progress,
    RayJobRef,
    StepMetrics,
    run_storage,
)
from kubetune.builders.meta import uid_of
from kubetune.builders.naming import rayjob_name
from kubetune.diagnosis import (
    RUN_REASONS,
    STARTING_REASONS,
    PodFacts,
    WarningEvent,
    classify_error,
    diagnose,
)

ConditionStatus = Literal["True", "False", "Unknown"]
# KubeRay deployment statuses after which the RayJob runs nothing more.
TERMINAL_DEPLOYMENTS = ("Complete", "Failed", "ValidationFailed")

DEPLOYMENT_STATUSES = (
    "",
    "New",
    "Initializing",
    "Running",
    "Complete",
    "Failed",
    "Suspending",
    "Suspended",
    "Retrying",
    "Waiting",
    "ValidationFailed",
)
JOB_STATUSES = ("", "PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED")

# KubeRay reason -> our reason. Unknown KubeRay reasons become RayJobFailed.
FAILURE_REASONS = {
    "SubmissionFailed": "SubmissionFailed",
    "DeadlineExceeded": "DeadlineExceeded",
    "PreRunningDeadlineExceeded": "DeadlineExceeded",
    "AppFailed": "TrainerFailed",
    "ValidationFailed": "RayJobValidationFailed",
    "JobDeploymentStatusTransitionGracePeriodExceeded": "RayClusterUnavailable",
    "JobStatusCheckTimeoutExceeded": "RayClusterUnavailable",
}
# What the operator itself observed (not KubeRay's status) when it decides the phase.
ProblemReason = Literal[
    "CreateFailed",
    "CreateRejected",
    "KubeRayTooOld",
    "NameConflict",
    "RayJobDeleted",
    "InvalidReport",
]
PROBLEM_REASONS: tuple[str, ...] = get_args(ProblemReason)
# Transient: the phase stays Pending and the operator retries (with backoff).
TRANSIENT_PROBLEMS = ("CreateFailed",)
# Reasons that post a Warning event even without a phase change.
WARNING_REASONS = ("CreateFailed", *STARTING_REASONS)
ACTIVE_PHASES = ("Provisioning", "Training", "Evaluating")
# Phases in which the trainer runs, and so can stall.
STALL_PHASES = ("Training", "Evaluating")
HINTS = {
    "CreateRejected": (
        "fix what the API server names (a ResourceQuota, an admission policy or webhook, the "
        "installed KubeRay CRD) and create the FineTuneJob again"
    ),
    "KubeRayTooOld": (
        "upgrade the KubeRay operator and its CRDs (helm upgrade kuberay-operator), then create "
        "the FineTuneJob again"
    ),
    "NameConflict": (
        "kubetune never adopts or changes an object it did not create: delete or rename that "
        "object, or give the FineTuneJob another name"
    ),
    "RayJobDeleted": (
        "kubetune does not re-create a deleted RayJob (that would train again from scratch); "
        "create a new FineTuneJob to run again"
    ),
    "InvalidReport": (
        "use the trainer image that matches this operator's version; a report that points "
        "outside the job's storage or names another job is never trusted"
    ),
    "Diverged": (
        "lower spec.training.learningRate (or train in bf16) and create a new FineTuneJob"
    ),
    "SubmissionFailed": (
        "the submitter could not reach the Ray dashboard: check the head pod "
        "(image, resources) and the submitter Job's logs"
    ),
    "DeadlineExceeded": (
        "raise spec.runPolicy.activeDeadlineSeconds (create a new job) or "
        "train fewer epochs/samples"
    ),
    # Keyed by KubeRay's reason: same kubetune reason, a different cause and remedy.
    "PreRunningDeadlineExceeded": (
        "kubectl describe the job's Ray pods and read their events: a node pool no node "
        "matches (nodePool labels, taints without tolerations, too few GPUs), an image that "
        "cannot be pulled, or a missing Secret or claim; or raise "
        "spec.runPolicy.preRunningDeadlineSeconds when nodes take longer to come up"
    ),
    "TrainerFailed": "see the trainer error above and the Ray job logs on the dashboard",
    "OOMKilled": (
        "give each worker more memory or need less: a smaller batchSizePerDevice or "
        "contextLength, gradient checkpointing, LoRA, or more workers (kubetune plan shows "
        "the memory per GPU and per node); then create a new FineTuneJob"
    ),
    "DataError": (
        "fix the data the trainer error names (its file, split and row) or the task's "
        "templates, then create a new FineTuneJob"
    ),
    "ScorerError": (
        "fix spec.task.scorer as the trainer error says (an entry point that imports in the"
        " trainer image and takes (prediction, reference)), then create a new FineTuneJob"
    ),
    "CollectiveTimeout": (
        "a rank stopped answering a collective (all-reduce, all-gather): read the Ray logs of "
        "every worker for the first one that failed; a lost node or a slow shared filesystem "
        "are the usual causes; set runPolicy.backoffLimit to retry on a new cluster"
    ),
    "Evicted": (
        "the kubelet evicted a pod for node pressure: when it names the kubetune-scratch "
        "volume, the run needs more local disk than planned (report it with the job's "
        ".status.plan); otherwise give the node pool more memory or disk"
    ),
    "Preempted": (
        "a higher-priority workload, a node drain or a lost node took a pod: set "
        "runPolicy.backoffLimit so a new cluster retries the run, or use nodes that are not "
        "reclaimed"
    ),
    "ImagePullFailed": (
        "check spec.compute.image (name and tag), that the nodes can reach its registry, and "
        "the pull secret; an image meant to be preloaded must be on every node"
    ),
    "PodConfigError": (
        "create the Secret, ConfigMap or PersistentVolumeClaim the pod names (spec.output "
        "credentials, spec.model tokens, pvc:// storage) in the job's namespace"
    ),
    "Unschedulable": (
        "no node matches the pods: check spec.compute.nodePool (instanceType, nodeSelector, "
        "tolerations) against the nodes' labels and taints, and that the pool has enough free "
        "GPUs, CPU, memory and ephemeral storage (.status.plan.scratchGiB); or raise "
        "spec.runPolicy.preRunningDeadlineSeconds when nodes take longer to come up"
    ),
    "Stalled": (
        "the trainer made no progress for spec.runPolicy.stallTimeoutSeconds: read the Ray "
        "logs of every worker (a hung collective, a dead data loader); raise the timeout when "
        "a healthy step or save takes longer"
    ),
    "RayJobValidationFailed": "KubeRay rejected the generated RayJob: report a kubetune bug",
    "RayClusterUnavailable": "the Ray cluster stopped answering: check the head pod and node events",
    "Stopped": "the Ray job was stopped (ray job stop, or a deadline); create a new job to retry",
}


@dataclass(frozen=True)
class Problem:
    """Something the operator observed that decides the phase on its own: a child it could
    not create, a RayJob that vanished, a report it refuses. `message` names the object and
    carries the API server's words."""

    reason: ProblemReason
    message: str
    rayjob_exists: bool = False  # a creation problem of the report channel, not the RayJob

    @property
    def transient(self) -> bool:
        return self.reason in TRANSIENT_PROBLEMS


@dataclass(frozen=True)
class Verdict:
    """The phase decision, before it is spread over conditions and fields."""

    phase: Phase
    reason: str
    message: str
    stalled: str | None = None  # why the job counts as Stalled (condition Stalled)


@dataclass(frozen=True)
class Observation:
    """What the operator saw besides the RayJob and the report: the job's pods (and Warning
    events about them), the time, and the stall timeout in force."""

    pods: Sequence[PodFacts] = ()
    events: Sequence[WarningEvent] = ()
    stall_timeout_s: int | None = None
    now: str = ""
    before: tuple[str, str] = ("", "")  # the previous phase and headline reason
    rayjob_created: bool = True  # False: the operator has not created the RayJob (yet)


# --------------------------------------------------------------------------- helpers


def _field(status: dict[str, Any] | None, name: str) -> str:
    return str((status or {}).get(name) or "")


def _trainer_error(report: TrainerReport | None) -> str:
    return f" Trainer error: {report.error}." if report is not None and report.error else ""


def _kuberay_detail(status: dict[str, Any]) -> str:
    reason, message = _field(status, "reason"), _field(status, "message")
    parts = [p for p in (reason, message) if p]
    return f" KubeRay: {': '.join(parts)}." if parts else ""


def _failure(
    reason: str,
    summary: str,
    status: dict[str, Any],
    report: TrainerReport | None,
    hint_key: str | None = None,
) -> Verdict:
    hint = HINTS.get(hint_key or "") or HINTS.get(reason)
    message = f"{summary}.{_kuberay_detail(status)}{_trainer_error(report)}"
    return Verdict("Failed", reason, f"{message} Next: {hint}." if hint else message)


def _trainer_cause(report: TrainerReport | None) -> str | None:
    """The kind of the trainer's failure: its own word, else read from its error text."""
    if report is None:
        return None
    return report.error_reason or classify_error(report.error)


def _waiting_verdict(job: FineTuneJob, default: Verdict, seen: Observation) -> Verdict:
    """Suspended by the user, queued in Kueue (never admitted, or preempted after it ran),
    or simply not started yet."""
    policy = job.spec.run_policy
    if policy.suspend:
        return Verdict(
            "Suspended",
            "Suspended",
            "suspended by spec.runPolicy.suspend; set it to false to resume",
        )
    if policy.queue_name:
        phase, reason = seen.before
        if phase in ACTIVE_PHASES or (phase == "Queued" and reason == "Preempted"):
            return Verdict(
                "Queued",
                "Preempted",
                f"Kueue took the run's quota back (preempted or evicted) and suspended it; it "
                f"is queued again in {policy.queue_name} and starts a new Ray cluster when "
                f"re-admitted (kubectl get workloads shows why)",
            )
        return Verdict(
            "Queued",
            "QuotaWait",
            f"waiting for Kueue to admit the RayJob from queue {policy.queue_name}: its "
            f"ClusterQueue has no free quota for it yet, or other workloads come first "
            f"(kubectl get workloads shows its position and why)",
        )
    return default


def _starting_verdict(default: Verdict, seen: Observation) -> Verdict:
    """Provisioning, with the pods' cause as the reason while the cluster cannot start;
    Failed at once when waiting cannot help."""
    found = diagnose(seen.pods, seen.events, STARTING_REASONS, live_only=True)
    if found is None:
        return default
    if found.permanent:
        return _failure(found.reason, f"the Ray cluster cannot start: {found.message}", {}, None)
    return Verdict("Provisioning", found.reason, f"{default.message}; {found.message}")


def _active_phase(job: FineTuneJob, report: TrainerReport | None) -> Phase:
    """Evaluating from the trainer's word; a trainer that already reports Succeeded while
    Ray still runs it is finishing its last step, so it does not go back to Training."""
    if report is None:
        return "Training"
    if report.phase == "Evaluating":
        return "Evaluating"
    if report.phase == "Succeeded" and job.spec.evaluation.enabled:
        return "Evaluating"
    return "Training"


def _training_verdict(
    job: FineTuneJob, job_status: str, report: TrainerReport | None, seen: Observation
) -> Verdict:
    if job_status in ("", "PENDING"):
        return _starting_verdict(
            Verdict(
                "Provisioning", "JobPending", "Ray cluster is up; the trainer is being submitted"
            ),
            seen,
        )
    phase = _active_phase(job, report)
    if report is None:
        return Verdict(phase, "Training", "trainer started; no report yet")
    if phase == "Evaluating":
        return Verdict(phase, "Evaluating", "evaluating the best checkpoint")
    where = f"stage {report.stage}, " if report.stage else ""
    epochs = (
        f"epoch {report.epoch}/{report.total_epochs}" if report.total_epochs else "preparing data"
    )
    return Verdict(phase, "Training", f"training: {where}{epochs}")


def _results_missing(job: FineTuneJob, report: TrainerReport | None) -> str | None:
    if report is None:
        return "the trainer wrote no report"
    if report.best_checkpoint is None:
        return "the report has no best checkpoint"
    if job.spec.evaluation.enabled and report.evaluation is None:
        return "evaluation is enabled but the report has no evaluation scores"
    return None


def _complete_verdict(
    job: FineTuneJob, status: dict[str, Any], report: TrainerReport | None, seen: Observation
) -> Verdict:
    job_status = _field(status, "jobStatus")
    if job_status == "SUCCEEDED":
        missing = _results_missing(job, report)
        if missing:
            return _failure(
                "IncompleteResults", f"the Ray job succeeded but {missing}", status, report
            )
        return Verdict("Succeeded", "Succeeded", _success_message(report))
    if job_status == "FAILED":
        return _failure_with_cause(
            "TrainerFailed", "the trainer exited with an error", status, report, seen
        )
    if job_status == "STOPPED":
        return _failure("Stopped", "the Ray job was stopped before it finished", status, report)
    return _failure(
        "OutcomeUnknown",
        f"KubeRay marked the RayJob Complete but the Ray job status is "
        f"{job_status or 'empty'}, so success cannot be confirmed",
        status,
        report,
    )


def _success_message(report: TrainerReport | None) -> str:
    assert report is not None and report.best_checkpoint is not None
    best = report.best_checkpoint
    text = (
        f"best checkpoint {best.uri} (stage {best.stage}, epoch {best.epoch}, "
        f"validation perplexity {best.validation_perplexity:.4g})"
    )
    if report.evaluation is not None:
        ev = report.evaluation
        text += f"; {ev.task} {ev.primary_metric} {ev.score:.4g} on {ev.samples} samples"
        gain = ev.with_gain().gain or {}
        if ev.baseline and ev.primary_metric in gain:
            base = ev.baseline[ev.primary_metric]
            text += f" (base model {base:.4g}, gain {gain[ev.primary_metric]:+.4g})"
    return text


# KubeRay reasons whose cause the trainer or the pods can name; an active deadline is its
# own cause, and a refused RayJob is kubetune's.
CAUSES_OF = {
    "AppFailed": "run",
    "": "run",
    "JobDeploymentStatusTransitionGracePeriodExceeded": "run",
    "JobStatusCheckTimeoutExceeded": "run",
    "PreRunningDeadlineExceeded": "start",
    "SubmissionFailed": "start",
}


TRAINER_SUMMARIES = {
    "OOMKilled": "the trainer ran out of memory",
    "DataError": "the trainer could not use the data",
    "ScorerError": "the task's scorer could not be used",
    "CollectiveTimeout": "a collective operation between the workers timed out",
}


def _cause_of(
    status: dict[str, Any], report: TrainerReport | None, seen: Observation
) -> tuple[str, str, bool] | None:
    """(reason, what happened, whether the trainer said it) behind KubeRay's failure."""
    kind = CAUSES_OF.get(_field(status, "reason"))
    if kind is None:
        return None
    trainer = _trainer_cause(report) if kind == "run" else None
    if trainer is not None:
        return trainer, TRAINER_SUMMARIES[trainer], True
    reasons = STARTING_REASONS if kind == "start" else RUN_REASONS
    # Only this attempt's pods (KubeRay stamps startTime before it makes the cluster).
    found = diagnose(seen.pods, seen.events, reasons, since=_field(status, "startTime"))
    return None if found is None else (found.reason, found.message, False)


def _failure_with_cause(
    reason: str,
    summary: str,
    status: dict[str, Any],
    report: TrainerReport | None,
    seen: Observation,
    hint_key: str | None = None,
) -> Verdict:
    """A failure whose reason is its cause when the trainer or the pods name one."""
    cause = _cause_of(status, report, seen)
    if cause is None:
        return _failure(reason, summary, status, report, hint_key)
    cause_reason, what, from_trainer = cause
    return _failure(cause_reason, what if from_trainer else f"{summary}: {what}", status, report)


def _failed_verdict(
    status: dict[str, Any], report: TrainerReport | None, seen: Observation
) -> Verdict:
    kuberay_reason = _field(status, "reason")
    reason = FAILURE_REASONS.get(kuberay_reason, "RayJobFailed")
    summary = {
        "SubmissionFailed": "the trainer could not be submitted to the Ray cluster",
        "DeadlineExceeded": "the run exceeded its deadline",
        "TrainerFailed": "the trainer failed",
        "RayJobValidationFailed": "KubeRay refused the RayJob",
        "RayClusterUnavailable": "the Ray cluster became unavailable",
    }.get(reason, "the RayJob failed")
    if kuberay_reason == "PreRunningDeadlineExceeded":
        summary = "the Ray job never started running within the pre-running deadline"
    stale = _field(status, "jobStatus")
    if stale in ("PENDING", "RUNNING"):
        summary += f" (the last Ray job status, {stale}, is stale)"
    return _failure_with_cause(reason, summary, status, report, seen, hint_key=kuberay_reason)


def _retrying_verdict(
    status: dict[str, Any],
    attempts: int,
    backoff_limit: int,
    report: TrainerReport | None,
    seen: Observation,
) -> Verdict:
    found = _cause_of(status, report, seen)
    cause = f" ({found[0]}: {found[1]})" if found is not None else ""
    return Verdict(
        "Provisioning",
        "Retrying",
        f"attempt {attempts} failed{cause}, starting a new Ray cluster "
        f"(retry {attempts} of {backoff_limit}).{_kuberay_detail(status)}",
    )


EPOCH_NUMBERS = ("train_loss", "validation_loss", "validation_perplexity")


def _epoch_numbers(e: EpochMetrics) -> dict[str, float]:
    return {name: getattr(e, name) for name in EPOCH_NUMBERS}


def _step_numbers(s: StepMetrics) -> dict[str, float]:
    numbers = {"train_loss": s.train_loss, "learning_rate": s.learning_rate}
    return numbers if s.grad_norm is None else {**numbers, "grad_norm": s.grad_norm}


def _scores(ev: EvaluationResult) -> dict[str, float]:
    return {
        "score": ev.score,
        **ev.metrics,
        **{f"baseline {k}": v for k, v in (ev.baseline or {}).items()},
    }


def _all_finite(numbers: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in numbers.values())


def nonfinite_fields(report: TrainerReport) -> list[str]:
    """Paths of NaN/Inf numbers in the report (JSON, and so the status, cannot carry them)."""
    found = [
        f"epochs[{i}] (stage {e.stage}, epoch {e.epoch}) {name}={value}"
        for i, e in enumerate(report.epochs)
        for name, value in _epoch_numbers(e).items()
        if not math.isfinite(value)
    ]
    # A step's loss goes NaN before its epoch ends; its gradient norm may be Inf on a skipped
    # fp16 step without any divergence, so only the loss counts here.
    found += [
        f"steps (stage {s.stage}, step {s.step}) train_loss={s.train_loss}"
        for s in report.steps
        if not math.isfinite(s.train_loss)
    ][:1]
    best = report.best_checkpoint
    if best is not None and not math.isfinite(best.validation_perplexity):
        found.append(f"bestCheckpoint validation_perplexity={best.validation_perplexity}")
    ev = report.evaluation
    if ev is not None:
        found += [f"evaluation {k}={v}" for k, v in _scores(ev).items() if not math.isfinite(v)]
    return found


def _divergence(report: TrainerReport | None) -> Verdict | None:
    bad = nonfinite_fields(report) if report is not None else []
    if not bad:
        return None
    training = [b for b in bad if not b.startswith("evaluation")]
    if training:
        return _failure("Diverged", f"training diverged: {'; '.join(training)}", {}, report)
    return _failure(
        "InvalidReport", f"the evaluation produced non-finite scores: {'; '.join(bad)}", {}, report
    )


def _problem_verdict(problem: Problem, job: FineTuneJob, report: TrainerReport | None) -> Verdict:
    if problem.transient:
        return Verdict("Pending", problem.reason, f"{problem.message}; retrying with backoff")
    finished = report is not None and report.phase == "Succeeded"
    if problem.reason == "RayJobDeleted" and finished and _results_missing(job, report) is None:
        return Verdict(
            "Succeeded",
            "Succeeded",
            f"{_success_message(report)} (the trainer finished; {problem.message})",
        )
    return _failure(problem.reason, problem.message, {}, report)


def decide_phase(
    job: FineTuneJob,
    status: dict[str, Any] | None,
    report: TrainerReport | None,
    attempts: int,
    problem: Problem | None = None,
    seen: Observation = Observation(),
) -> Verdict:
    """The phase for one observation of the RayJob; `status` None = no RayJob status yet.

    A diverged run (NaN/Inf in the report) and the operator's own `problem` come first:
    KubeRay may still say Running while the result can no longer be trusted.
    """
    diverged = _divergence(report)
    if diverged is not None:
        return diverged
    if problem is not None:
        return _problem_verdict(problem, job, report)
    return _with_stall(job, _rayjob_verdict(job, status, report, attempts, seen), report, seen)


def _rayjob_verdict(
    job: FineTuneJob,
    status: dict[str, Any] | None,
    report: TrainerReport | None,
    attempts: int,
    seen: Observation,
) -> Verdict:
    pending = Verdict("Pending", "RayJobCreated", "RayJob created; waiting for KubeRay")
    deployment = _field(status, "jobDeploymentStatus")
    if status is None or deployment in ("", "New", "Suspending", "Suspended"):
        return _waiting_verdict(
            job,
            pending
            if deployment in ("", "New")
            else Verdict("Suspended", "Suspended", "the RayJob was suspended outside kubetune"),
            seen,
        )
    if deployment in ("Initializing", "Waiting"):
        starting = "starting the Ray cluster (head and worker pods)"
        return _starting_verdict(Verdict("Provisioning", "ClusterStarting", starting), seen)
    if deployment == "Running":
        return _training_verdict(job, _field(status, "jobStatus"), report, seen)
    if deployment == "Retrying":
        return _retrying_verdict(
            status, max(attempts - 1, 1), job.spec.run_policy.backoff_limit, report, seen
        )
    if deployment == "Complete":
        return _complete_verdict(job, status, report, seen)
    if deployment in ("Failed", "ValidationFailed"):
        if deployment == "ValidationFailed" and not _field(status, "reason"):
            status = {**status, "reason": "ValidationFailed"}
        return _failed_verdict(status, report, seen)
    return Verdict(
        "Provisioning",
        "UnknownRayJobState",
        f"unknown RayJob deployment status {deployment!r}; waiting for KubeRay",
    )


# --------------------------------------------------------------------------- stalls


def parse_time(text: str | None) -> datetime.datetime | None:
    """An RFC 3339 time (as the trainer and the operator write them), or None."""
    try:
        value = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)


def stall_due(report: TrainerReport | None, timeout_s: int | None) -> datetime.datetime | None:
    """When a trainer that makes no more progress counts as stalled (None: it never does)."""
    if not timeout_s or report is None or report.heartbeat is None:
        return None
    if report.phase not in ("Preparing", "Training", "Evaluating"):
        return None  # finished: nothing more to progress
    last = parse_time(report.heartbeat.at)
    return None if last is None else last + datetime.timedelta(seconds=timeout_s)


def _with_stall(
    job: FineTuneJob, verdict: Verdict, report: TrainerReport | None, seen: Observation
) -> Verdict:
    due, now = stall_due(report, seen.stall_timeout_s), parse_time(seen.now)
    if verdict.phase not in STALL_PHASES or due is None or now is None or now < due:
        return verdict
    assert report is not None and report.heartbeat is not None
    beat = report.heartbeat
    what = f" (last: {beat.activity})" if beat.activity else ""
    stalled = (
        f"no trainer progress since {beat.at}{what}, longer than the stall timeout of "
        f"{seen.stall_timeout_s} s"
    )
    if job.spec.run_policy.fail_on_stall:
        failed = _failure("Stalled", f"the run stalled: {stalled}", {}, report)
        return dataclasses.replace(failed, stalled=stalled)
    return Verdict(verdict.phase, verdict.reason, f"{verdict.message}; stalled: {stalled}", stalled)


# --------------------------------------------------------------------------- attempts


def count_attempts(status: dict[str, Any] | None, previous: RayJobRef | None) -> int:
    """Cluster attempts so far, from `status.failed`/`succeeded` (1.2+), never decreasing.

    A RayJob that left "" / Suspended has started attempt failed+succeeded+1 unless it is
    terminal, in which case every attempt is counted already.
    """
    before = previous.attempts if previous is not None else 0
    if status is None:
        return before
    deployment = _field(status, "jobDeploymentStatus")
    if deployment in ("", "New", "Suspended", "Suspending"):
        return before
    finished = int(status.get("failed") or 0) + int(status.get("succeeded") or 0)
    current = max(finished, 1) if deployment in TERMINAL_DEPLOYMENTS else finished + 1
    return max(before, current)


# --------------------------------------------------------------------------- conditions


ConditionState = tuple[ConditionStatus, str, str]  # status, reason, message


def _condition_states(verdict: Verdict) -> dict[str, ConditionState]:
    """The standard condition set; messages ride on the conditions that are True."""
    phase, reason, message = verdict.phase, verdict.reason, verdict.message
    active = phase in ACTIVE_PHASES
    waiting = phase in ("Suspended", "Queued")
    if phase == "Succeeded":
        outcome: ConditionState = ("True", reason, message)
    elif phase == "Failed":
        outcome = ("False", reason, message)
    else:
        outcome = ("Unknown", "InProgress", "")
    return {
        "Accepted": ("True", "SpecValid", ""),
        "Running": ("True", reason, message)
        if active
        else ("False", reason, message)
        if phase == "Pending"
        else ("False", phase, ""),
        "Suspended": ("True", reason, message) if waiting else ("False", "NotSuspended", ""),
        "Succeeded": outcome,
        "Failed": ("True", reason, message) if phase == "Failed" else ("False", "NotFailed", ""),
        "Stalled": ("True", "NoProgress", verdict.stalled)
        if verdict.stalled
        else ("False", "Progressing", ""),
    }


def merge_conditions(
    previous: list[Condition], wanted: dict[str, ConditionState], generation: int | None, now: str
) -> list[Condition]:
    """One condition per type; lastTransitionTime moves only when the status flips."""
    old = {c.type: c for c in previous}
    result = []
    for type_, (status, reason, message) in wanted.items():
        before = old.get(type_)
        since = before.last_transition_time if before and before.status == status else now
        result.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=since,
                observed_generation=generation,
            )
        )
    return result


# --------------------------------------------------------------------------- entry points


def _generation(job: FineTuneJob) -> int | None:
    value = (job.metadata.model_extra or {}).get("generation")
    return int(value) if value is not None else None


def _progress(report: TrainerReport) -> Progress:
    return Progress(
        stage=report.stage,
        epoch=report.epoch,
        total_epochs=report.total_epochs,
        step=report.step,
        total_steps=report.total_steps,
        eta_seconds=report.eta_seconds,
    )


def _ray_job_ref(
    job: FineTuneJob, status: dict[str, Any] | None, attempts: int, previous: RayJobRef | None
) -> RayJobRef:
    keep = previous or RayJobRef(name=rayjob_name(job.metadata.name))
    if status is None:
        return keep.model_copy(update={"attempts": attempts})
    return RayJobRef(
        name=rayjob_name(job.metadata.name),
        job_id=_field(status, "jobId") or keep.job_id,
        dashboard_url=_field(status, "dashboardURL") or keep.dashboard_url,
        deployment_status=_field(status, "jobDeploymentStatus") or None,
        job_status=_field(status, "jobStatus") or None,
        attempts=attempts,
    )


def _finite_results(report: TrainerReport) -> dict[str, Any]:
    """The report's results without non-finite numbers (the verdict already names them)."""
    best, ev = report.best_checkpoint, report.evaluation
    return {
        "epochs": [e for e in report.epochs if _all_finite(_epoch_numbers(e))],
        "steps": [s for s in report.steps if _all_finite(_step_numbers(s))],
        "best_checkpoint": best
        if best is None or math.isfinite(best.validation_perplexity)
        else None,
        "evaluation": ev.with_gain() if ev is not None and _all_finite(_scores(ev)) else None,
        "resumes": report.resumes,
    }


def local_rayjob_status(report: TrainerReport) -> dict[str, Any]:
    """What KubeRay would say about a `kubetune run` with this report, so a local run goes
    through the same `map_rayjob_status` as the operator: running until the trainer's last
    word, then Complete with the Ray job's outcome."""
    if report.phase == "Succeeded":
        return {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
    if report.phase == "Failed":
        return {"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"}
    return {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}


CREATION_PROBLEMS = ("CreateFailed", "CreateRejected", "KubeRayTooOld", "NameConflict")


def map_rayjob_status(
    job: FineTuneJob,
    rayjob_status: dict[str, Any] | None,
    report: TrainerReport | None,
    previous_status: FineTuneJobStatus | None,
    now: str,
    problem: Problem | None = None,
    seen: Observation = Observation(),
) -> FineTuneJobStatus:
    """The FineTuneJob status for one observation (see the module docstring for the rules).

    `now` is an RFC 3339 timestamp (passed in, so the function stays pure and testable).
    `problem` is what the operator itself saw (see `Problem`), `seen` its pods, events and
    the stall timeout. The operator and `kubetune run` both call this, so one report means
    the same phase and messages everywhere.
    """
    previous = previous_status or FineTuneJobStatus()
    if previous.phase in TERMINAL_PHASES:
        return previous
    prev_ref = previous.ray_job
    attempts = count_attempts(rayjob_status, prev_ref)
    seen = dataclasses.replace(
        seen, now=now, before=(previous.phase or "", headline_reason(previous))
    )
    verdict = decide_phase(job, rayjob_status, report, attempts, problem, seen)
    # Credentials out first (KubeRay's and the trainer's words are not ours), then within
    # the schema's limit, cut with a marker: a message is never refused whole.
    verdict = dataclasses.replace(
        verdict,
        message=safe_message(verdict.message),
        stalled=safe_message(verdict.stalled) if verdict.stalled else None,
    )
    started = verdict.phase not in ("Pending", "Queued", "Suspended")
    terminal = verdict.phase in TERMINAL_PHASES
    generation = _generation(job)
    not_created = not seen.rayjob_created or (
        problem is not None and problem.reason in CREATION_PROBLEMS and not problem.rayjob_exists
    )
    status = previous.model_copy(
        update={
            "phase": verdict.phase,
            "message": verdict.message,
            "observed_generation": generation,
            "conditions": merge_conditions(
                previous.conditions, _condition_states(verdict), generation, now
            ),
            # No RayJob reference until one exists: the operator reads "rayJob is set" as
            # "the RayJob was created", and never creates it a second time.
            "ray_job": prev_ref
            if not_created
            else _ray_job_ref(job, rayjob_status, attempts, prev_ref),
            "output_uri": job_storage(job, report)
            if report is not None
            else previous.output_uri or job_storage(job, None),
            "start_time": previous.start_time
            or ((_field(rayjob_status, "startTime") or now) if started else None),
            "completion_time": (_field(rayjob_status, "endTime") or now) if terminal else None,
        }
    )
    if report is not None:
        status = status.model_copy(
            update={"progress": _progress(report), **_finite_results(report)}
        )
    return status


def job_storage(job: FineTuneJob, report: TrainerReport | None) -> str:
    """The job's own folder of its storage, <storageURI>/<uid>, where its checkpoints must
    lie; the storageURI itself for a trainer that predates per-job folders (report schema 2:
    a run started before an operator upgrade)."""
    old = report is not None and report.schema_version < PER_JOB_STORAGE_SINCE
    return run_storage(job.spec.output.storage_uri, None if old else uid_of(job))


def headline_reason(status: FineTuneJobStatus) -> str:
    """The reason of the status' headline condition: the first True of Failed, Succeeded,
    Running and Suspended."""
    for type_ in ("Failed", "Succeeded", "Running", "Suspended"):
        condition = _condition(status, type_)
        if condition is not None and condition.status == "True":
            return condition.reason
    running = _condition(status, "Running")
    return running.reason if running is not None else (status.phase or "")


def _condition(status: FineTuneJobStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def stall_message(status: FineTuneJobStatus | None) -> str | None:
    """Why the job counts as Stalled (its Stalled condition's message), or None."""
    stalled = _condition(status, "Stalled") if status is not None else None
    return stalled.message if stalled is not None and stalled.status == "True" else None


def seconds_to_stall(
    status: FineTuneJobStatus, report: TrainerReport | None, timeout_s: int | None, now: str
) -> float | None:
    """How long until a running, not yet stalled trainer would count as stalled if it made
    no more progress: when the operator must look again, since a hung run sends no events."""
    due, current = stall_due(report, timeout_s), parse_time(now)
    if status.phase not in STALL_PHASES or stall_message(status) or due is None or not current:
        return None
    return (due - current).total_seconds()


def safe_message(text: str) -> str:
    """What may be written into status and events: redacted, then cut to MESSAGE_LIMIT."""
    return cut_text(redact(text), MESSAGE_LIMIT)


def invalid_spec_status(
    generation: int | None, problems: list[str], previous_status: FineTuneJobStatus | None, now: str
) -> FineTuneJobStatus:
    """Phase Failed, reason InvalidSpec, a message naming every offending field."""
    message = "invalid spec: " + "; ".join(problems)
    return refused_status(generation, "InvalidSpec", message, previous_status, now)


def refused_status(
    generation: int | None,
    reason: str,
    message: str,
    previous_status: FineTuneJobStatus | None,
    now: str,
) -> FineTuneJobStatus:
    """A job the operator will not start (InvalidSpec, WillNotFit): Failed before any pod."""
    previous = previous_status or FineTuneJobStatus()
    message = safe_message(message)
    verdict = Verdict("Failed", reason, message)
    states = _condition_states(verdict)
    states["Accepted"] = ("False", reason, message)
    return previous.model_copy(
        update={
            "phase": "Failed",
            "message": message,
            "observed_generation": generation,
            "conditions": merge_conditions(previous.conditions, states, generation, now),
            "completion_time": previous.completion_time or now,
        }
    )
