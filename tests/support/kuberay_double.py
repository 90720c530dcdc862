"""A stand-in for KubeRay (and the trainer) in control-plane tests: no kubelets run here.

It polls the RayJobs of one namespace and writes their status the way KubeRay v1.6.2 does
on real pods (the transcripts in tests/fixtures/kuberay, recorded by the cluster tier, are the
reference; `history` keeps every state written so a test holds the two together):
"" -> Initializing -> Running (no job status, PENDING, RUNNING, then the job's end: SUCCEEDED
or FAILED while still Running) -> Complete/SUCCEEDED, or Failed with
KubeRay's reasons (AppFailed, DeadlineExceeded with a stale RUNNING jobStatus,
SubmissionFailed, PreRunningDeadlineExceeded for pods that never start), Retrying with `status.failed` and a fresh cluster, Suspending/Suspended
when spec.suspend is set. While "running" it plays the trainer: it writes the report into
the job's FineTuneJobReport with a token of the trainer's own ServiceAccount (TokenRequest),
so the operator-made RBAC is exercised by real requests.

Each RayJob follows a `Script` that a test picks (`double.script(name, ...)`); `hold`
stops a job at a step until `release`.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune.api.report import REPORT_SCHEMA_VERSION, TrainerReport
from kubetune.api.v1alpha1 import run_storage
from kubetune_trainer.entrypoint import build_parser
from kubetune_trainer.job_source import JobSourceError, read_own_job
from kubetune_trainer.reporting import OBJECT_TARGET, ObjectReporter
from tests.support import transcripts

RAY = ("ray.io", "v1")
RAYJOBS = "rayjobs"
OUTCOMES = (
    "succeed",
    "trainer-fails",
    "deadline",
    "submission-fails",
    "no-checkpoint",
    "diverges",
    "never-starts",
    "worker-dies",
)
TRAINER_ERROR = "CUDA out of memory on rank 3: lower batchSizePerDevice"


class NotReady(Exception):
    """Something the pods need does not exist yet; retried on the next tick."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Script:
    """How one RayJob's run goes. `fail_attempts` attempts fail (AppFailed) before `outcome`.
    `error` (and `error_reason`) is what a failing trainer reports; "worker-dies" fails
    with AppFailed and no trainer error, as when a Ray worker's process is killed."""

    outcome: str = "succeed"
    epochs: int = 3
    fail_attempts: int = 0
    # "Running": stop before training until released; "Epoch": after the first epoch's
    # report (its heartbeat then ages: a stalled trainer)
    hold_at: str | None = None
    error: str = TRAINER_ERROR
    error_reason: str | None = None

    def __post_init__(self) -> None:
        assert self.outcome in OUTCOMES, self.outcome


@dataclass
class _Run:
    script: Script
    step: int = 0
    epoch: int = 0
    attempt: int = 1
    held: bool = False
    pulses: int = 0  # progress reports still to write while held (`pulse`)
    log: list[str] = field(default_factory=list)
    job: dict[str, Any] | None = None  # the FineTuneJob, as the trainer read it
    # The terminal status written on the next tick, after the Ray job's own end was shown
    # with the RayJob still Running (as KubeRay does).
    ending: dict[str, Any] | None = None

    @property
    def storage(self) -> str:
        """Where the trainer writes: the job's own folder of its storageURI."""
        job = self.job or {}
        uri = str((job.get("spec") or {}).get("output", {}).get("storageURI"))
        return run_storage(uri, (job.get("metadata") or {}).get("uid"))


def report_document(
    epoch: int, total: int, phase: str, storage: str = "s3://ckpt", **extra: Any
) -> dict[str, Any]:
    """A TrainerReport (wire JSON) after `epoch` epochs of the gsm8k stage, with its
    checkpoints under `storage`."""
    curve = [
        {
            "stage": "gsm8k",
            "epoch": e,
            "trainLoss": round(2.0 / e, 4),
            "validationLoss": round(1.5 / e, 4),
            "validationPerplexity": round(2.0 + 1.0 / e, 4),
            "checkpoint": f"{storage}/epoch-{e}",
        }
        for e in range(1, epoch + 1)
    ]
    doc: dict[str, Any] = {
        "schemaVersion": REPORT_SCHEMA_VERSION,
        "phase": phase,
        "stage": "gsm8k",
        "epoch": epoch,
        "totalEpochs": total,
        "step": epoch * 10,
        "totalSteps": total * 10,
        "etaSeconds": (total - epoch) * 60,
        "updatedAt": _now(),
        "epochs": curve,
        "heartbeat": {
            "at": _now(),
            "step": epoch * 10,
            "activity": f"optimizer step {epoch * 10}/{total * 10}",
        },
    }
    if epoch:
        best = curve[-1]
        doc["bestCheckpoint"] = {
            "uri": best["checkpoint"],
            "stage": "gsm8k",
            "epoch": epoch,
            "validationPerplexity": best["validationPerplexity"],
        }
    return {**doc, **extra}


SCORES = {
    "task": "gsm8k",
    "samples": 1319,
    "primaryMetric": "accuracy",
    "score": 0.47,
    "metrics": {"accuracy": 0.47},
    "baseline": {"accuracy": 0.28},
}


class KubeRayDouble:
    """Plays KubeRay and the trainer for the RayJobs of one namespace (a background thread)."""

    def __init__(
        self,
        admin: client.ApiClient,
        namespace: str,
        server: str,
        ca_path: Path,
        interval: float = 0.15,
    ) -> None:
        self.admin = admin
        self.namespace = namespace
        self.server = server
        self.ca_path = ca_path
        self.interval = interval
        self.custom = client.CustomObjectsApi(admin)
        self.core = client.CoreV1Api(admin)
        self.runs: dict[str, _Run] = {}
        self.default = Script()
        self.errors: list[str] = []
        # every (jobDeploymentStatus, jobStatus) written, per RayJob, in order
        self.history: dict[str, list[tuple[str, str]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kuberay-double", daemon=True)
        self._lock = threading.Lock()

    # -- test controls ------------------------------------------------------------------------

    def script(self, name: str, script: Script) -> None:
        with self._lock:
            self.runs[name] = _Run(script)

    def release(self, name: str) -> None:
        with self._lock:
            run = self.runs[name]
            run.script.hold_at, run.held = None, False

    def pulse(self, name: str) -> None:
        """The held trainer makes progress once: a report with a fresh heartbeat."""
        with self._lock:
            self.runs[name].pulses += 1

    def is_held(self, name: str) -> bool:
        with self._lock:
            run = self.runs.get(name)
            return bool(run and run.held)

    def start(self) -> KubeRayDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    # -- loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                items = self.custom.list_namespaced_custom_object(*RAY, self.namespace, RAYJOBS)[
                    "items"
                ]
                for rayjob in items:
                    # NotReady: try again next tick, as KubeRay's requeue would
                    with contextlib.suppress(NotReady):
                        self._advance(rayjob)
            except Exception as error:  # keep playing; the test sees `errors`
                self.errors.append(repr(error))
            self._stop.wait(self.interval)

    def _advance(self, rayjob: dict[str, Any]) -> None:
        name = rayjob["metadata"]["name"]
        with self._lock:
            run = self.runs.setdefault(name, _Run(Script(**vars(self.default))))
        status = rayjob.get("status") or {}
        deployment = status.get("jobDeploymentStatus", "")
        if deployment in ("Complete", "Failed"):
            return
        if deployment == "Suspending":  # the cluster is gone; KubeRay always lands here
            self._patch(
                rayjob,
                {
                    "jobDeploymentStatus": "Suspended",
                    "jobStatus": None,
                    "rayClusterName": None,
                    "startTime": None,
                },
            )
            return
        if rayjob["spec"].get("suspend"):
            self._suspend(rayjob, deployment)
            return
        if deployment == "Retrying":  # the old cluster deleted, KubeRay starts over from New
            # KubeRay's New is the empty string for both fields (omitted from the object).
            self._patch(
                rayjob,
                {"jobDeploymentStatus": None, "jobStatus": None, "rayClusterName": None},
            )
        elif deployment in ("", "Suspended"):
            self._initialize(rayjob, run)
        elif deployment == "Initializing" and run.script.outcome == "never-starts":
            self._past_pre_running_deadline(rayjob, status)
        elif deployment == "Initializing":
            self._patch(rayjob, {"jobDeploymentStatus": "Running", "jobStatus": None})
        elif deployment == "Running":
            self._running(rayjob, run, status)

    # -- transitions --------------------------------------------------------------------------

    def _suspend(self, rayjob: dict[str, Any], deployment: str) -> None:
        if deployment in ("Running", "Initializing"):
            self._patch(rayjob, {"jobDeploymentStatus": "Suspending"})
        elif deployment != "Suspended":
            self._patch(
                rayjob,
                {
                    "jobDeploymentStatus": "Suspended",
                    "jobStatus": None,
                    "rayClusterName": None,
                    "startTime": None,
                },
            )

    def _initialize(self, rayjob: dict[str, Any], run: _Run) -> None:
        name = rayjob["metadata"]["name"]
        cluster = f"{name}-raycluster-{run.attempt:05d}"
        self._patch(
            rayjob,
            {
                "jobDeploymentStatus": "Initializing",
                "jobStatus": None,
                "jobId": f"{name}-{run.attempt}-0001",
                "rayClusterName": cluster,
                "dashboardURL": f"{cluster}-head-svc.{self.namespace}.svc.cluster.local:8265",
                "startTime": _now(),
                "reason": None,
                "message": None,
            },
        )

    def _past_pre_running_deadline(self, rayjob: dict[str, Any], status: dict[str, Any]) -> None:
        """Pods that never start: KubeRay 1.6+ fails the RayJob once preRunningDeadlineSeconds
        have passed since startTime, with no Ray job status (nothing was ever submitted)."""
        deadline = rayjob["spec"].get("preRunningDeadlineSeconds")
        started = time.mktime(time.strptime(status["startTime"], "%Y-%m-%dT%H:%M:%SZ"))
        if deadline and time.mktime(time.gmtime()) - started >= deadline:
            self._fail(
                rayjob,
                "PreRunningDeadlineExceeded",
                f"The RayJob has passed the preRunningDeadlineSeconds. StartTime: "
                f"{status['startTime']}. PreRunningDeadlineSeconds: {deadline}",
                "",
            )

    def _running(self, rayjob: dict[str, Any], run: _Run, status: dict[str, Any]) -> None:
        script = run.script
        if run.ending is not None:
            ending, run.ending = run.ending, None
            self._patch(rayjob, ending)
            return
        if status.get("jobStatus") in (None, "") and script.outcome != "submission-fails":
            self._patch(rayjob, {"jobDeploymentStatus": "Running", "jobStatus": "PENDING"})
            return
        if status.get("jobStatus") in (None, "", "PENDING"):
            if script.outcome == "submission-fails":
                self._fail(
                    rayjob,
                    "SubmissionFailed",
                    "Job submission has failed. Reason: the dashboard at :8265 was "
                    "unreachable after 5 attempts",
                    status.get("jobStatus") or "PENDING",
                )
                return
            self._start_trainer(rayjob, run)
            self._patch(rayjob, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
            return
        if script.hold_at == "Running" or (script.hold_at == "Epoch" and run.epoch >= 1):
            with self._lock:
                run.held = True
                pulse, run.pulses = run.pulses > 0, max(run.pulses - 1, 0)
            if pulse:
                doc = report_document(run.epoch, script.epochs, "Training", run.storage)
                self._write_report(rayjob, doc)
            return
        if run.attempt <= script.fail_attempts:
            self._retry_or_fail(rayjob, run, status)
            return
        self._train_one_step(rayjob, run)

    def _train_one_step(self, rayjob: dict[str, Any], run: _Run) -> None:
        script = run.script
        total = script.epochs
        if script.outcome == "deadline" and run.epoch >= 1:
            deadline = rayjob["spec"].get("activeDeadlineSeconds", 0)
            self._fail(
                rayjob,
                "DeadlineExceeded",
                f"The RayJob has passed the activeDeadlineSeconds. StartTime: "
                f"{_now()}. ActiveDeadlineSeconds: {deadline}",
                "RUNNING",
            )
            return
        if script.outcome == "trainer-fails" and run.epoch >= 1:
            reason = {"errorReason": script.error_reason} if script.error_reason else {}
            self._write_report(
                rayjob,
                report_document(
                    run.epoch, total, "Failed", run.storage, error=script.error, **reason
                ),
            )
            self._fail(rayjob, "AppFailed", "Job exited with code 1", "FAILED", run=run)
            return
        if script.outcome == "worker-dies" and run.epoch >= 1:
            self._fail(rayjob, "AppFailed", "Job exited with code 1", "FAILED", run=run)
            return
        if script.outcome == "diverges" and run.epoch >= 1:
            # The real trainer writes json.dumps floats: NaN and Infinity literals.
            doc = report_document(run.epoch + 1, total, "Training", run.storage)
            doc["epochs"][-1].update(trainLoss=math.nan, validationPerplexity=math.inf)
            doc["bestCheckpoint"] = None
            self._write_report(rayjob, doc)
            return  # KubeRay still says Running: the operator must end it
        if run.epoch < total:
            self._write_report(
                rayjob, report_document(run.epoch + 1, total, "Training", run.storage)
            )
            run.epoch += 1
            return
        if script.outcome == "no-checkpoint":
            self._write_report(rayjob, {"phase": "Succeeded", "epoch": total})
        else:
            self._write_report(rayjob, report_document(total, total, "Evaluating", run.storage))
            self._write_report(
                rayjob,
                report_document(total, total, "Succeeded", run.storage, evaluation=SCORES),
            )
        self._end(
            rayjob,
            run,
            {
                "jobDeploymentStatus": "Complete",
                "jobStatus": "SUCCEEDED",
                "endTime": _now(),
                "succeeded": 1,
            },
        )

    def _end(self, rayjob: dict[str, Any], run: _Run, final: dict[str, Any]) -> None:
        """The Ray job's end, first with the RayJob still Running, then `final`."""
        self._patch(rayjob, {"jobDeploymentStatus": "Running", "jobStatus": final["jobStatus"]})
        run.ending = final

    def _retry_or_fail(self, rayjob: dict[str, Any], run: _Run, status: dict[str, Any]) -> None:
        failed = int(status.get("failed") or 0) + 1
        limit = int(rayjob["spec"].get("backoffLimit") or 0)
        if failed <= limit:
            run.attempt += 1
            run.epoch = 0
            self._end(
                rayjob,
                run,
                {
                    "jobDeploymentStatus": "Retrying",
                    "jobStatus": "FAILED",
                    "failed": failed,
                    "reason": "AppFailed",
                    "message": "Job exited with code 1",
                },
            )
        else:
            self._fail(rayjob, "AppFailed", "Job exited with code 1", "FAILED", failed, run)

    def _fail(
        self,
        rayjob: dict[str, Any],
        reason: str,
        message: str,
        job_status: str,
        failed: int | None = None,
        run: _Run | None = None,
    ) -> None:
        """Fail the RayJob; with `run`, the way an application failure ends (the Ray job
        FAILED while the RayJob is Running, then Failed)."""
        status = {
            "jobDeploymentStatus": "Failed",
            "jobStatus": job_status,
            "reason": reason,
            "message": message,
            "endTime": _now(),
        }
        previous = int((rayjob.get("status") or {}).get("failed") or 0)
        status["failed"] = failed if failed is not None else previous + 1
        if run is not None:
            self._end(rayjob, run, status)
        else:
            self._patch(rayjob, status)

    # -- writes -------------------------------------------------------------------------------

    def _patch(self, rayjob: dict[str, Any], status: dict[str, Any]) -> None:
        name = rayjob["metadata"]["name"]
        self.custom.patch_namespaced_custom_object_status(
            *RAY, self.namespace, RAYJOBS, name, {"status": status}
        )
        merged = rayjob.setdefault("status", {})
        merged.update(status)
        with self._lock:
            transcripts.note_change(self.history.setdefault(name, []), transcripts.state_of(merged))

    def trainer_client(self, rayjob: dict[str, Any]) -> client.ApiClient:
        """An API client authenticated as the Ray pods' ServiceAccount (a fresh token)."""
        template = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        account = template["serviceAccountName"]
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
        )
        try:
            token = self.core.create_namespaced_service_account_token(
                account, self.namespace, request
            ).status.token
        except ApiException as error:
            if error.status == 404:  # like a pod whose ServiceAccount is not there yet
                raise NotReady(f"ServiceAccount {account} does not exist yet") from None
            raise
        cfg = client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = str(self.ca_path)
        cfg.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(cfg)

    def _start_trainer(self, rayjob: dict[str, Any], run: _Run) -> None:
        """What the trainer does first: read its own FineTuneJob with its own token, as the
        entrypoint the operator wrote says (the real argument parser reads it)."""
        args = trainer_args(rayjob)
        with self.trainer_client(rayjob) as api:
            try:
                run.job = read_own_job(args.job_name, args.namespace, args.job_uid, api=api)
            except JobSourceError as error:
                self.errors.append(str(error))
                raise NotReady(str(error)) from None

    def _write_report(self, rayjob: dict[str, Any], report: dict[str, Any]) -> None:
        """What the trainer does: patch the report, stamped with the job's uid, into the
        FineTuneJobReport named in --report."""
        args = trainer_args(rayjob)
        target = args.report.removeprefix(f"{OBJECT_TARGET}:")
        with self.trainer_client(rayjob) as api:
            # The trainer's own reporter (with its retries), as the trainer's account.
            reporter = ObjectReporter(target, self.namespace, api=client.CustomObjectsApi(api))
            try:
                reporter.write(TrainerReport.model_validate({"jobUid": args.job_uid, **report}))
            except ApiException as error:
                self.errors.append(f"trainer could not write its report: {error.status}")
                raise


def trainer_args(rayjob: dict[str, Any]) -> Any:
    """The trainer's arguments from the RayJob entrypoint (`python -m module ARGS`)."""
    return build_parser().parse_args(shlex.split(rayjob["spec"]["entrypoint"])[3:])
