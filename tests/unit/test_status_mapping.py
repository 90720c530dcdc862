"""map_rayjob_status: every KubeRay v1.1-1.7 deploymentStatus x jobStatus, and the rules."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.report import TrainerReport
from kubetune.api.v1alpha1 import FineTuneJob, FineTuneJobStatus
from kubetune.diagnosis import pod_facts, warning_event
from kubetune.status_mapping import (
    DEPLOYMENT_STATUSES,
    HINTS,
    JOB_STATUSES,
    Observation,
    count_attempts,
    invalid_spec_status,
    map_rayjob_status,
)
from tests.support import pod_states as k8s

pytestmark = pytest.mark.unit

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"
BEST = {"uri": "s3://b/ckpt/epoch-3", "stage": "gsm8k", "epoch": 3, "validationPerplexity": 2.5}
SCORES = {
    "task": "gsm8k",
    "samples": 100,
    "primaryMetric": "accuracy",
    "score": 0.47,
    "metrics": {"accuracy": 0.47},
}
CURVE = [
    {
        "stage": "gsm8k",
        "epoch": e,
        "trainLoss": 1.0 / e,
        "validationLoss": 0.9 / e,
        "validationPerplexity": 2.0 + 1 / e,
    }
    for e in (1, 2, 3)
]


def job(evaluation: bool = True, **run_policy: Any) -> FineTuneJob:
    return FineTuneJob.model_validate(
        {
            "metadata": {"name": "j", "namespace": "ns", "generation": 3, "uid": "u"},
            "spec": {
                "model": {"name": "m"},
                "task": {"preset": "gsm8k"},
                "data": {"train": {"uri": "s3://d/train"}, "test": {"uri": "s3://d/test"}},
                "evaluation": {"enabled": evaluation},
                "output": {"storageURI": "s3://out"},
                "runPolicy": {"backoffLimit": 2, **run_policy},
            },
        }
    )


def report(**fields: Any) -> TrainerReport:
    base: dict[str, Any] = {
        "phase": "Training",
        "stage": "gsm8k",
        "epoch": 2,
        "totalEpochs": 10,
        "epochs": CURVE,
    }
    return TrainerReport.model_validate({**base, **fields})


FULL = report(phase="Succeeded", bestCheckpoint=BEST, evaluation=SCORES)


def rj(deployment: str, job_status: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "jobDeploymentStatus": deployment,
        "jobStatus": job_status,
        "jobId": "j-123",
        "dashboardURL": "j-head-svc.ns.svc:8265",
        **extra,
    }


def expected_phase(deployment: str, job_status: str) -> str:
    """The rules, restated independently of the implementation."""
    if deployment in ("", "New"):
        return "Pending"
    if deployment in ("Suspending", "Suspended"):
        return "Suspended"
    if deployment in ("Initializing", "Waiting", "Retrying"):
        return "Provisioning"
    if deployment == "Running":
        # FULL says the trainer is done, so it is finishing (evaluation), never back to Training
        return "Provisioning" if job_status in ("", "PENDING") else "Evaluating"
    if deployment == "Complete":
        return "Succeeded" if job_status == "SUCCEEDED" else "Failed"
    return "Failed"  # Failed, ValidationFailed


@pytest.mark.parametrize("job_status", JOB_STATUSES)
@pytest.mark.parametrize("deployment", DEPLOYMENT_STATUSES)
def test_every_kuberay_combination(deployment: str, job_status: str) -> None:
    status = map_rayjob_status(job(), rj(deployment, job_status), FULL, None, T0)
    assert status.phase == expected_phase(deployment, job_status)
    assert status.ray_job is not None
    assert status.ray_job.deployment_status == (deployment or None)
    assert status.ray_job.job_status == (job_status or None)
    if status.phase == "Failed":
        assert status.message and status.completion_time == T0
        failed = next(c for c in status.conditions if c.type == "Failed")
        assert failed.status == "True" and failed.reason and failed.message
    assert status.phase not in ("Training", "Evaluating") or deployment == "Running"


def test_no_rayjob_status_yet_is_pending() -> None:
    status = map_rayjob_status(job(), None, None, None, T0)
    assert status.phase == "Pending" and status.start_time is None
    assert status.ray_job is not None and status.ray_job.name == "j"


@pytest.mark.parametrize("job_status", ["STOPPED", "FAILED", "", "PENDING", "RUNNING"])
def test_complete_is_success_only_with_succeeded(job_status: str) -> None:
    status = map_rayjob_status(job(), rj("Complete", job_status), FULL, None, T0)
    assert status.phase == "Failed"


def test_succeeded_mirrors_results() -> None:
    status = map_rayjob_status(job(), rj("Complete", "SUCCEEDED", endTime=T1), FULL, None, T0)
    assert status.phase == "Succeeded"
    assert status.best_checkpoint is not None and status.best_checkpoint.epoch == 3
    assert status.evaluation is not None and status.evaluation.score == 0.47
    assert [e.epoch for e in status.epochs] == [1, 2, 3]
    assert status.completion_time == T1
    assert "s3://b/ckpt/epoch-3" in (status.message or "")
    succeeded = next(c for c in status.conditions if c.type == "Succeeded")
    assert succeeded.status == "True" and succeeded.observed_generation == 3


@pytest.mark.parametrize(
    ("the_report", "evaluation", "missing"),
    [
        (None, True, "no report"),
        (report(phase="Succeeded"), True, "no best checkpoint"),
        (report(phase="Succeeded", bestCheckpoint=BEST), True, "no evaluation scores"),
    ],
)
def test_success_needs_results(
    the_report: TrainerReport | None, evaluation: bool, missing: str
) -> None:
    status = map_rayjob_status(job(evaluation), rj("Complete", "SUCCEEDED"), the_report, None, T0)
    assert status.phase == "Failed"
    assert missing in (status.message or "")
    assert next(c for c in status.conditions if c.type == "Failed").reason == "IncompleteResults"


def test_scores_not_needed_when_evaluation_disabled() -> None:
    the_report = report(phase="Succeeded", bestCheckpoint=BEST)
    status = map_rayjob_status(job(False), rj("Complete", "SUCCEEDED"), the_report, None, T0)
    assert status.phase == "Succeeded"


@pytest.mark.parametrize(
    ("kuberay_reason", "reason", "words"),
    [
        ("DeadlineExceeded", "DeadlineExceeded", "activeDeadlineSeconds"),
        ("SubmissionFailed", "SubmissionFailed", "submitter"),
        ("AppFailed", "TrainerFailed", "rank 3 raised"),
        ("JobDeploymentStatusTransitionGracePeriodExceeded", "RayClusterUnavailable", "head pod"),
        ("SomethingNew", "RayJobFailed", "SomethingNew"),
    ],
)
def test_failure_messages_are_actionable(kuberay_reason: str, reason: str, words: str) -> None:
    the_report = report(phase="Failed", error="RuntimeError: rank 3 raised")
    status = map_rayjob_status(
        job(),
        rj("Failed", "FAILED", reason=kuberay_reason, message="it broke"),
        the_report,
        None,
        T0,
    )
    assert status.phase == "Failed"
    assert next(c for c in status.conditions if c.type == "Failed").reason == reason
    assert words in (status.message or "")
    assert "it broke" in (status.message or "")


def test_stale_job_status_after_deployment_failure() -> None:
    status = map_rayjob_status(
        job(), rj("Failed", "RUNNING", reason="SubmissionFailed"), None, None, T0
    )
    assert status.phase == "Failed"
    assert "stale" in (status.message or "")
    running = next(c for c in status.conditions if c.type == "Running")
    assert running.status == "False"


def test_validation_failed_is_terminal() -> None:
    status = map_rayjob_status(
        job(), rj("ValidationFailed", "", message="bad spec"), None, None, T0
    )
    assert status.phase == "Failed"
    assert (
        next(c for c in status.conditions if c.type == "Failed").reason == "RayJobValidationFailed"
    )


def test_retrying_is_not_failure_and_counts_attempts() -> None:
    first = map_rayjob_status(job(), rj("Running", "RUNNING"), report(), None, T0)
    assert first.ray_job is not None and first.ray_job.attempts == 1
    retry = map_rayjob_status(
        job(), rj("Retrying", "FAILED", failed=1, reason="AppFailed"), None, first, T1
    )
    assert retry.phase == "Provisioning"
    assert retry.ray_job is not None and retry.ray_job.attempts == 2
    assert "retry 1 of 2" in (retry.message or "")
    assert next(c for c in retry.conditions if c.type == "Running").reason == "Retrying"
    final = map_rayjob_status(
        job(), rj("Failed", "FAILED", failed=3, reason="AppFailed"), None, retry, T2
    )
    assert final.phase == "Failed" and final.ray_job is not None and final.ray_job.attempts == 3


def test_attempts_never_decrease() -> None:
    prev = map_rayjob_status(job(), rj("Running", "RUNNING", failed=2), None, None, T0).ray_job
    assert count_attempts(rj("Initializing"), prev) == 3
    assert count_attempts(None, prev) == 3


@pytest.mark.parametrize(
    ("policy", "phase"),
    [
        ({"suspend": True}, "Suspended"),
        ({"queueName": "gpu"}, "Queued"),
        ({"queueName": "gpu", "suspend": True}, "Suspended"),
        ({}, "Suspended"),
    ],
)
def test_suspended_rayjob(policy: dict[str, Any], phase: str) -> None:
    status = map_rayjob_status(job(**policy), rj("Suspended"), None, None, T0)
    assert status.phase == phase
    assert next(c for c in status.conditions if c.type == "Suspended").status == "True"
    assert status.start_time is None


def test_queued_before_kuberay_saw_it() -> None:
    assert map_rayjob_status(job(queueName="gpu"), None, None, None, T0).phase == "Queued"


def test_training_and_evaluating_follow_the_report() -> None:
    training = map_rayjob_status(job(), rj("Running", "RUNNING", startTime=T0), report(), None, T1)
    assert training.phase == "Training" and "epoch 2/10" in (training.message or "")
    assert training.progress is not None and training.progress.epoch == 2
    assert training.start_time == T0
    evaluating = map_rayjob_status(
        job(), rj("Running", "RUNNING"), report(phase="Evaluating"), training, T2
    )
    assert evaluating.phase == "Evaluating"
    finishing = map_rayjob_status(job(), rj("Running", "RUNNING"), FULL, evaluating, T2)
    assert finishing.phase == "Evaluating"
    no_eval = map_rayjob_status(job(False), rj("Running", "RUNNING"), FULL, training, T2)
    assert no_eval.phase == "Training"


def test_transition_time_kept_while_status_unchanged() -> None:
    a = map_rayjob_status(job(), rj("Running", "RUNNING"), report(epoch=1), None, T0)
    b = map_rayjob_status(job(), rj("Running", "RUNNING"), report(epoch=2), a, T1)
    running = {c.type: c for c in b.conditions}["Running"]
    assert running.status == "True" and running.last_transition_time == T0
    c = map_rayjob_status(job(), rj("Complete", "SUCCEEDED"), FULL, b, T2)
    assert {x.type: x for x in c.conditions}["Running"].last_transition_time == T2


def test_same_observation_gives_equal_status() -> None:
    a = map_rayjob_status(job(), rj("Running", "RUNNING"), report(), None, T0)
    b = map_rayjob_status(job(), rj("Running", "RUNNING"), report(), a, T1)
    assert a == b  # so the operator writes nothing


def test_terminal_is_sticky() -> None:
    done = map_rayjob_status(job(), rj("Complete", "SUCCEEDED"), FULL, None, T0)
    later = map_rayjob_status(job(), rj("Running", "RUNNING"), None, done, T1)
    assert later == done


def test_report_missing_keeps_previous_curve() -> None:
    a = map_rayjob_status(job(), rj("Running", "RUNNING"), report(), None, T0)
    b = map_rayjob_status(job(), rj("Running", "RUNNING"), None, a, T1)
    assert b.epochs == a.epochs


def test_invalid_spec_status() -> None:
    status = invalid_spec_status(4, ["spec.compute.workers: 12 workers do not fill"], None, T0)
    assert status.phase == "Failed" and status.observed_generation == 4
    accepted = {c.type: c for c in status.conditions}["Accepted"]
    assert (accepted.status, accepted.reason) == ("False", "InvalidSpec")
    assert "spec.compute.workers" in accepted.message
    assert isinstance(FineTuneJobStatus.model_validate(status.to_wire()), FineTuneJobStatus)


def step_point(step: int, loss: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {
        "stage": "gsm8k",
        "epoch": 1,
        "step": step,
        "trainLoss": loss,
        "learningRate": 1e-3,
        "gradNorm": 0.5,
        "tokensPerSecond": 900.0,
        "usefulTokensPerSecond": 400.0,
        "packingFill": 0.9,
        **extra,
    }


def test_gain_is_derived_from_scores_and_baseline_not_taken_from_the_report() -> None:
    scores = {
        **SCORES,
        "metrics": {"accuracy": 0.47, "format_rate": 0.9},
        "baseline": {"accuracy": 0.28},
        "gain": {"accuracy": 99.0},  # a trainer's own number is never mirrored
    }
    done = report(phase="Succeeded", bestCheckpoint=BEST, evaluation=scores)
    status = map_rayjob_status(job(), rj("Complete", "SUCCEEDED"), done, None, T0)
    assert status.evaluation is not None and status.evaluation.gain == {
        "accuracy": pytest.approx(0.19)
    }
    assert "base model 0.28, gain +0.19" in (status.message or "")
    no_baseline = map_rayjob_status(job(), rj("Complete", "SUCCEEDED"), FULL, None, T0)
    assert no_baseline.evaluation is not None and no_baseline.evaluation.gain is None


def test_step_curve_is_mirrored_without_non_finite_points() -> None:
    steps = [step_point(10), step_point(20, gradNorm=float("inf")), step_point(30)]
    status = map_rayjob_status(job(), rj("Running", "RUNNING"), report(steps=steps), None, T0)
    assert status.phase == "Training"
    assert [s.step for s in status.steps] == [10, 30]  # JSON cannot carry Inf
    FineTuneJobStatus.model_validate(status.to_wire())


def test_a_nan_step_loss_is_divergence_before_the_epoch_ends() -> None:
    steps = [step_point(10), step_point(20, loss=float("nan"))]
    status = map_rayjob_status(job(), rj("Running", "RUNNING"), report(steps=steps), None, T0)
    assert status.phase == "Failed"
    diverged = next(c for c in status.conditions if c.type == "Failed")
    assert diverged.reason == "Diverged" and "step 20" in (diverged.message or "")


# --------------------------------------------------------------------------- causes


def reason_of(status: FineTuneJobStatus, type_: str) -> str:
    return next(c for c in status.conditions if c.type == type_).reason


def pods_seen(*statuses: dict[str, Any], events: tuple[dict[str, Any], ...] = ()) -> Observation:
    pods = [pod_facts(k8s.pod(f"w-{i}", f"u{i}", s)) for i, s in enumerate(statuses)]
    found = [warning_event(e) for e in events]
    return Observation(pods, tuple(e for e in found if e is not None))


PRE_RUNNING = rj("Failed", "", reason="PreRunningDeadlineExceeded", message="passed the deadline")


@pytest.mark.parametrize(
    ("pod_status", "reason", "words"),
    [
        (k8s.unschedulable(), "Unschedulable", "node affinity"),
        (k8s.image_pull_backoff(), "ImagePullFailed", "trainer:typo"),
        (k8s.config_error(), "PodConfigError", "hf-token"),
    ],
)
def test_a_cluster_that_never_started_fails_with_its_cause(
    pod_status: dict[str, Any], reason: str, words: str
) -> None:
    starting = map_rayjob_status(
        job(), rj("Initializing"), None, None, T0, seen=pods_seen(pod_status)
    )
    assert starting.phase == "Provisioning" and reason_of(starting, "Running") == reason
    assert words in (starting.message or "")
    failed = map_rayjob_status(job(), PRE_RUNNING, None, starting, T1, seen=pods_seen(pod_status))
    assert failed.phase == "Failed" and reason_of(failed, "Failed") == reason
    message = failed.message or ""
    assert "never started running within the pre-running deadline" in message
    assert words in message and HINTS[reason] in message and "passed the deadline" in message


def test_without_a_cause_the_pre_running_deadline_says_so() -> None:
    failed = map_rayjob_status(job(), PRE_RUNNING, None, None, T1, seen=pods_seen())
    assert reason_of(failed, "Failed") == "DeadlineExceeded"


def test_an_image_that_can_never_be_pulled_fails_at_once() -> None:
    status = map_rayjob_status(
        job(), rj("Initializing"), None, None, T0, seen=pods_seen(k8s.image_never_pull())
    )
    assert status.phase == "Failed" and reason_of(status, "Failed") == "ImagePullFailed"
    assert "pull policy of Never" in (status.message or "")


def test_events_explain_a_pod_stuck_creating() -> None:
    event = k8s.warning_event("w-0", "u0", "FailedMount", k8s.MOUNT_MESSAGE)
    seen = pods_seen(k8s.container_creating(), events=(event,))
    status = map_rayjob_status(job(), rj("Initializing"), None, None, T0, seen=seen)
    assert reason_of(status, "Running") == "PodConfigError"
    assert 'persistentvolumeclaim "ckpt" not found' in (status.message or "")


@pytest.mark.parametrize(
    ("error", "error_reason", "reason"),
    [
        ("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", None, "OOMKilled"),
        ("DataError: ValueError: train.jsonl: malformed JSON at line 3", None, "DataError"),
        ("RuntimeError: Watchdog caught collective operation timeout", None, "CollectiveTimeout"),
        ("RuntimeError: something else", "DataError", "DataError"),  # the trainer's word wins
    ],
)
def test_trainer_failures_carry_their_kind(
    error: str, error_reason: str | None, reason: str
) -> None:
    failed = report(phase="Failed", error=error, errorReason=error_reason)
    for rayjob in (rj("Failed", "FAILED", reason="AppFailed"), rj("Complete", "FAILED")):
        status = map_rayjob_status(job(), rayjob, failed, None, T0)
        assert reason_of(status, "Failed") == reason
        assert error in (status.message or "") and HINTS[reason] in (status.message or "")


@pytest.mark.parametrize(
    ("pod_status", "reason"),
    [(k8s.oom_killed(), "OOMKilled"), (k8s.preempted(), "Preempted"), (k8s.evicted(), "Evicted")],
)
def test_a_run_failure_takes_the_pods_cause(pod_status: dict[str, Any], reason: str) -> None:
    seen = pods_seen(pod_status)
    status = map_rayjob_status(
        job(), rj("Failed", "FAILED", reason="AppFailed"), report(), None, T0, seen=seen
    )
    assert reason_of(status, "Failed") == reason
    retry = map_rayjob_status(
        job(), rj("Retrying", "FAILED", failed=1, reason="AppFailed"), report(), None, T0, seen=seen
    )
    assert retry.phase == "Provisioning" and f"({reason}: " in (retry.message or "")


def test_an_active_deadline_is_its_own_cause() -> None:
    status = map_rayjob_status(
        job(),
        rj("Failed", "RUNNING", reason="DeadlineExceeded"),
        report(),
        None,
        T0,
        seen=pods_seen(k8s.oom_killed()),
    )
    assert reason_of(status, "Failed") == "DeadlineExceeded"


# --------------------------------------------------------------------------- stalls

BEAT = {"at": "2026-01-01T00:00:00Z", "step": 40, "activity": "optimizer step 40/100"}
RUNNING = rj("Running", "RUNNING", startTime=T0)


def stall_seen(timeout: int | None = 600) -> Observation:
    return Observation(stall_timeout_s=timeout)


def test_no_progress_for_the_timeout_is_a_stall_and_progress_clears_it() -> None:
    beating = report(heartbeat=BEAT)
    fresh = map_rayjob_status(
        job(), RUNNING, beating, None, "2026-01-01T00:09:59Z", seen=stall_seen()
    )
    assert next(c for c in fresh.conditions if c.type == "Stalled").status == "False"
    stalled = map_rayjob_status(
        job(), RUNNING, beating, fresh, "2026-01-01T00:10:00Z", seen=stall_seen()
    )
    condition = next(c for c in stalled.conditions if c.type == "Stalled")
    assert stalled.phase == "Training" and condition.status == "True"
    assert "optimizer step 40/100" in condition.message and "600 s" in condition.message
    assert "stalled" in (stalled.message or "")
    # The same stall seen later is the same status (no rewrite per reconcile).
    later = map_rayjob_status(
        job(), RUNNING, beating, stalled, "2026-01-01T00:30:00Z", seen=stall_seen()
    )
    assert later.to_wire() == stalled.to_wire()
    moved = report(heartbeat={**BEAT, "at": "2026-01-01T00:29:00Z", "step": 41})
    cleared = map_rayjob_status(
        job(), RUNNING, moved, stalled, "2026-01-01T00:30:00Z", seen=stall_seen()
    )
    assert next(c for c in cleared.conditions if c.type == "Stalled").status == "False"


def test_fail_on_stall_ends_the_job() -> None:
    status = map_rayjob_status(
        job(failOnStall=True),
        RUNNING,
        report(heartbeat=BEAT),
        None,
        "2026-01-01T01:00:00Z",
        seen=stall_seen(),
    )
    assert status.phase == "Failed" and reason_of(status, "Failed") == "Stalled"
    assert HINTS["Stalled"] in (status.message or "")
    assert next(c for c in status.conditions if c.type == "Stalled").status == "True"


@pytest.mark.parametrize(
    ("heartbeat", "timeout", "phase"),
    [(None, 600, "Training"), (BEAT, None, "Training"), (BEAT, 600, "Succeeded")],
)
def test_no_stall_without_a_clock(heartbeat: Any, timeout: int | None, phase: str) -> None:
    """No heartbeat yet (the stall clock starts with the first stage), stalls disabled, or a
    trainer that already finished."""
    the_report = report(heartbeat=heartbeat, phase=phase)
    status = map_rayjob_status(
        job(False), RUNNING, the_report, None, "2026-01-01T05:00:00Z", seen=stall_seen(timeout)
    )
    assert next(c for c in status.conditions if c.type == "Stalled").status == "False"


# --------------------------------------------------------------------------- Kueue


def test_queued_is_quota_wait_until_it_ran_then_preempted() -> None:
    queued = job(queueName="gpu")
    waiting = map_rayjob_status(queued, rj("Suspended"), None, None, T0)
    assert waiting.phase == "Queued" and reason_of(waiting, "Suspended") == "QuotaWait"
    running = map_rayjob_status(queued, rj("Running", "RUNNING"), report(), waiting, T1)
    evicted = map_rayjob_status(queued, rj("Suspended"), report(), running, T2)
    assert evicted.phase == "Queued" and reason_of(evicted, "Suspended") == "Preempted"
    assert "queued again in gpu" in (evicted.message or "")
    again = map_rayjob_status(queued, rj("Suspended"), report(), evicted, T2)
    assert reason_of(again, "Suspended") == "Preempted"
    # A user's suspension and resume is not a preemption.
    paused = map_rayjob_status(
        job(queueName="gpu", suspend=True), rj("Suspended"), None, running, T2
    )
    resumed = map_rayjob_status(queued, rj("Suspended"), None, paused, T2)
    assert reason_of(resumed, "Suspended") == "QuotaWait"


def test_the_run_writes_under_its_own_folder() -> None:
    status = map_rayjob_status(job(), rj("Running", "RUNNING"), report(), None, T0)
    assert status.output_uri == "s3://out/u"  # spec.output.storageURI + the job's uid
    assert status.to_wire()["outputURI"] == "s3://out/u"
