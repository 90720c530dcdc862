"""reconcile_job against an in-memory fake of the Kubernetes I/O: writes happen once per change.

Marked unit: no control plane, no kopf; it lives here because it tests the operator's loop.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from kubetune.config import OperatorConfig
from kubetune.controller.kube import check_owner, event_name
from kubetune.controller.reconcile import Operator, reconcile_job
from kubetune.controller.state import OperatorState
from tests.controlplane.operator.helpers import job_manifest
from tests.support.kuberay_double import SCORES, report_document

pytestmark = pytest.mark.unit


class FakeKube:
    """Records writes; `objects` are what exists (left by a previous operator run, or put
    there by a test). Adoption uses the real owner check; status patches are applied as the
    API server applies a merge patch, so a restarted operator can be given what it wrote."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self.status: dict[str, Any] = {}
        self.events: list[tuple[str, str, str]] = []

    def ensure(self, obj: dict[str, Any]) -> str:
        key = (obj["kind"], obj["metadata"]["name"])
        if key in self.objects:
            check_owner(obj, self.objects[key])
            return "adopted"
        self.objects[key] = copy.deepcopy(obj)
        self.objects[key]["metadata"]["uid"] = f"{obj['kind']}-uid"
        self.writes.append(("create", obj["kind"]))
        return "created"

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, name))

    def set_rayjob_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.objects[("RayJob", name)]["spec"]["suspend"] = suspend
        self.writes.append(("suspend", str(suspend)))

    def delete_rayjob(self, namespace: str, name: str, uid: str) -> None:
        self.objects.pop(("RayJob", name))
        self.writes.append(("delete", "RayJob"))

    def replace_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> None:
        json.dumps(status, allow_nan=False)  # the API server accepts JSON only
        assert uid == "uid-1", "the write names this incarnation"
        self.status = copy.deepcopy(status)
        self.writes.append(("status", status.get("phase", "")))

    def post_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.writes.append(("event", reason))
        self.events.append((type_, reason, message))

    def job_pods(self, namespace: str, job_uid: str) -> list[dict[str, Any]]:
        return []

    def pod_warnings(self, namespace: str, pod_uid: str) -> list[dict[str, Any]]:
        return []

    def workloads_of(self, namespace: str, rayjob_uid: str) -> list[dict[str, Any]]:
        return [w for (kind, _), w in self.objects.items() if kind == "Workload"]

    def set_workload_active(self, workload: dict[str, Any], active: bool) -> None:
        workload.setdefault("spec", {})["active"] = active
        self.writes.append(("workload", str(active)))


def body(name: str = "job", generation: int = 1, **spec: Any) -> dict[str, Any]:
    doc = job_manifest(name, **spec)
    doc["metadata"].update(namespace="ns", uid="uid-1", generation=generation)
    return doc


def run(op: Operator, doc: dict[str, Any], **observed: Any) -> None:
    """One event: `observed` is what the watches delivered (and so what a read returns)."""
    key = doc["metadata"]["uid"]
    js = op.state.get(key)
    js.body = doc
    for attr, value in observed.items():
        setattr(js, attr, value)
    kube: FakeKube = op.kube  # type: ignore[assignment]
    name = doc["metadata"]["name"]
    if "rayjob_status" in observed and ("RayJob", name) in kube.objects:
        kube.objects[("RayJob", name)]["status"] = observed["rayjob_status"]
    if "report_text" in observed and ("FineTuneJobReport", f"{name}-report") in kube.objects:
        kube.objects[("FineTuneJobReport", f"{name}-report")]["report"] = observed["report_text"]
    asyncio.run(reconcile_job(op, key))


def operator(kube: FakeKube) -> Operator:
    return Operator(kube, OperatorConfig(), OperatorState())  # type: ignore[arg-type]


def restarted(kube: FakeKube, doc: dict[str, Any]) -> tuple[Operator, dict[str, Any]]:
    """A new operator process, and the job as it would list it (with the status written)."""
    return operator(kube), {**doc, "status": copy.deepcopy(kube.status)}


RUNNING = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
COMPLETE = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
STORAGE = "s3://kubetune-checkpoints/llama2-7b-gsm8k"


def report(phase: str = "Training", uid: str = "uid-1", **extra: Any) -> str:
    doc = report_document(2, 3, phase, **extra)
    for epoch in doc["epochs"]:
        epoch["checkpoint"] = f"{STORAGE}/uid-1/epoch-{epoch['epoch']}"
    doc["bestCheckpoint"]["uri"] = f"{STORAGE}/uid-1/epoch-2"
    return json.dumps({**doc, "jobUid": uid})


def test_creates_children_once_and_writes_status_once() -> None:
    kube = FakeKube()
    op = operator(kube)
    run(op, body())
    assert kube.writes == [
        ("create", "NetworkPolicy"),
        ("create", "RayJob"),
        ("create", "FineTuneJobReport"),
        ("create", "ServiceAccount"),
        ("create", "Role"),
        ("create", "RoleBinding"),
        ("status", "Pending"),
        ("event", "Pending"),
    ]
    run(op, body())
    run(op, body(), rayjob_status=None)
    assert len(kube.writes) == 8, "nothing changed, so nothing was written"


def test_status_written_per_change_only() -> None:
    kube = FakeKube()
    op = operator(kube)
    run(op, body())
    running = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
    run(op, body(), rayjob_status=running)
    run(op, body(), rayjob_status=dict(running))
    statuses = [w for w in kube.writes if w[0] == "status"]
    assert statuses == [("status", "Pending"), ("status", "Training")]


def test_restart_adopts_existing_children() -> None:
    kube = FakeKube()
    run(operator(kube), body())
    before = len(kube.writes)
    run(operator(kube), body())  # a new process: empty memory, same cluster
    creates = [w for w in kube.writes[before:] if w[0] == "create"]
    assert creates == []


def test_invalid_spec_creates_nothing() -> None:
    kube = FakeKube()
    run(operator(kube), body(compute={"workers": 12}))
    assert [w[0] for w in kube.writes] == ["status", "event"]
    assert kube.writes[1] == ("event", "InvalidSpec")


def test_suspend_toggle_follows_run_policy() -> None:
    kube = FakeKube()
    op = operator(kube)
    run(op, body(runPolicy={"suspend": True}))
    assert kube.objects[("RayJob", "job")]["spec"]["suspend"] is True
    run(op, body(generation=2, runPolicy={"suspend": False}), rayjob_suspend=True)
    assert ("suspend", "False") in kube.writes


def test_queued_job_is_left_to_kueue() -> None:
    kube = FakeKube()
    op = operator(kube)
    run(op, body(runPolicy={"queueName": "gpu"}))
    run(op, body(runPolicy={"queueName": "gpu"}), rayjob_suspend=False)  # Kueue admitted it
    assert not [w for w in kube.writes if w[0] in ("suspend", "workload")]
    # The user suspends: the Workload is deactivated, the RayJob's spec.suspend left to Kueue.
    kube.objects[("Workload", "rayjob-job")] = {"metadata": {"name": "rayjob-job"}, "spec": {}}
    queued = {"queueName": "gpu", "suspend": True}
    run(op, body(generation=2, runPolicy=queued), rayjob_suspend=False, rayjob_uid="r-1")
    run(op, body(generation=2, runPolicy=queued), rayjob_suspend=False, rayjob_uid="r-1")
    assert [w for w in kube.writes if w[0] in ("suspend", "workload")] == [("workload", "False")]


def test_a_queued_job_suspended_from_the_start_creates_its_rayjob_on_resume() -> None:
    """Kueue could admit (and start) a new RayJob before its Workload is deactivated, so a
    queued job created suspended waits without one."""
    kube = FakeKube()
    op = operator(kube)
    run(op, body(runPolicy={"queueName": "gpu", "suspend": True}))
    assert ("RayJob", "job") not in kube.objects
    assert kube.status["phase"] == "Suspended" and "rayJob" not in kube.status
    run(op, {**body(generation=2, runPolicy={"queueName": "gpu"}), "status": kube.status})
    assert kube.objects[("RayJob", "job")]["spec"]["suspend"] is True  # Kueue admits it


def test_errors_are_retried_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = FakeKube()

    def refuse(obj: dict[str, Any]) -> str:
        raise ApiException(status=500, reason="etcd unavailable")

    monkeypatch.setattr(kube, "ensure", refuse)
    op = operator(kube)
    run(op, body())
    assert op.state.get("uid-1").failures == 1


def _reason(status: dict[str, Any], type_: str = "Failed") -> str:
    return str(next(c for c in status["conditions"] if c["type"] == type_)["reason"])


def test_finished_job_never_gets_children_again() -> None:
    kube = FakeKube()
    op = operator(kube)
    run(op, body())
    run(op, body(), rayjob_status=COMPLETE, report_text=report("Succeeded", evaluation=SCORES))
    assert kube.status["phase"] == "Succeeded"
    kube.objects.clear()  # RayJob and report channel deleted (by hand, or by KubeRay)
    before = list(kube.writes)
    op2, listed = restarted(kube, body())
    run(op2, listed)
    run(op2, listed, rayjob_status=None, rayjob_gone=True)
    assert kube.writes == before, "a finished job was touched again"


def test_rayjob_deleted_during_the_run_fails_the_job_without_retraining() -> None:
    kube = FakeKube()
    op = operator(kube)
    run(op, body())
    run(op, body(), rayjob_status=RUNNING, report_text=report())
    del kube.objects[("RayJob", "job")]
    op2, listed = restarted(kube, body())
    run(op2, listed)
    assert ("RayJob", "job") not in kube.objects, "the RayJob was created again"
    assert kube.status["phase"] == "Failed" and _reason(kube.status) == "RayJobDeleted"
    assert "last deployment status: Running" in kube.status["message"]
    # the learning curve so far stays in status
    assert len(kube.status["epochs"]) == 2


def test_rayjob_deleted_by_watch_after_the_trainer_finished_is_a_success() -> None:
    kube = FakeKube()
    op = operator(kube)
    run(op, body())
    run(op, body(), rayjob_status=RUNNING, report_text=report("Succeeded", evaluation=SCORES))
    del kube.objects[("RayJob", "job")]
    run(op, body(), rayjob_gone=True)
    assert kube.status["phase"] == "Succeeded", kube.status["message"]
    assert "was deleted before the run finished" in kube.status["message"]


def test_transient_create_error_reaches_status_and_retries_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = FakeKube()
    real = kube.ensure

    def quota(obj: dict[str, Any]) -> str:
        if obj["kind"] == "RayJob":
            raise ApiException(
                http_resp=_Response(403, {"message": 'rayjobs "job" is forbidden: exceeded quota'})
            )
        return real(obj)

    monkeypatch.setattr(kube, "ensure", quota)
    op = operator(kube)
    run(op, body())
    assert kube.status["phase"] == "Pending"
    assert _reason(kube.status, "Running") == "CreateFailed"
    assert "exceeded quota" in kube.status["message"] and "RayJob ns/job" in kube.status["message"]
    assert ("Warning", "CreateFailed") in [e[:2] for e in kube.events]
    js = op.state.jobs["uid-1"]
    assert js.retry_pending and js.failures == 1
    run(op, body())  # another event while the retry is pending: no second retry chain
    assert js.failures == 1
    assert [e[1] for e in kube.events].count("CreateFailed") == 1, "one warning per cause"
    monkeypatch.setattr(kube, "ensure", real)  # quota freed
    js.retry_pending = False
    run(op, body())
    assert ("RayJob", "job") in kube.objects and kube.status["phase"] == "Pending"
    assert _reason(kube.status, "Running") == "RayJobCreated" and "rayJob" in kube.status


class _Response:
    def __init__(self, status: int, body: dict[str, Any]):
        self.status, self.reason, self.data = status, "Refused", json.dumps(body).encode()
        self.headers: dict[str, str] = {}

    def getheaders(self) -> dict[str, str]:
        return {}


def test_permanent_create_error_fails_the_job_and_is_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = FakeKube()

    def refuse(obj: dict[str, Any]) -> str:
        raise ApiException(
            http_resp=_Response(422, {"message": 'admission webhook "x" denied: no GPUs here'})
        )

    monkeypatch.setattr(kube, "ensure", refuse)
    op = operator(kube)
    run(op, body())
    assert kube.status["phase"] == "Failed" and _reason(kube.status) == "CreateRejected"
    assert "no GPUs here" in kube.status["message"]
    assert not op.state.jobs["uid-1"].retry_pending
    assert kube.events[-1][:2] == ("Warning", "CreateRejected")


def test_object_of_another_owner_is_a_name_conflict_and_untouched() -> None:
    kube = FakeKube()
    foreign = {"kind": "FineTuneJobReport", "metadata": {"name": "job-report", "namespace": "ns"}}
    kube.objects[("FineTuneJobReport", "job-report")] = copy.deepcopy(foreign)
    op = operator(kube)
    run(op, body())
    assert kube.status["phase"] == "Failed" and _reason(kube.status) == "NameConflict"
    assert (
        "FineTuneJobReport ns/job-report already exists and is not owned"
        in (kube.status["message"])
    )
    assert kube.objects[("FineTuneJobReport", "job-report")] == foreign


def test_diverged_run_fails_with_a_writable_status_and_stops_the_rayjob() -> None:
    kube = FakeKube()
    op = operator(kube)
    run(op, body())
    doc = json.loads(report())
    doc["epochs"][1]["validationPerplexity"] = math.inf
    doc["epochs"][1]["trainLoss"] = math.nan
    doc["bestCheckpoint"]["validationPerplexity"] = math.inf
    run(op, body(), rayjob_status=RUNNING, report_text=json.dumps(doc))
    assert kube.status["phase"] == "Failed" and _reason(kube.status) == "Diverged"
    assert "epoch 2" in kube.status["message"] and "inf" in kube.status["message"]
    assert [e["epoch"] for e in kube.status["epochs"]] == [1], "finite points are kept"
    assert ("delete", "RayJob") in kube.writes


def test_huge_failure_message_is_cut_not_refused() -> None:
    kube = FakeKube()
    op = operator(kube)
    run(op, body())
    failed = {
        "jobDeploymentStatus": "Failed",
        "jobStatus": "FAILED",
        "reason": "AppFailed",
        "message": "log tail " * 5000,
    }
    run(op, body(), rayjob_status=failed, report_text=report("Failed", error="boom " * 6000))
    assert kube.status["phase"] == "Failed"
    assert len(kube.status["message"]) <= 32768 and "characters cut" in kube.status["message"]
    assert kube.status["message"].rstrip().endswith("on the dashboard."), "the hint survives"


def test_report_of_another_uid_is_ignored_and_foreign_checkpoints_refused() -> None:
    kube = FakeKube()
    op = operator(kube)
    run(op, body())
    run(op, body(), rayjob_status=RUNNING, report_text=report(uid="someone-else"))
    assert kube.status["phase"] == "Training" and not kube.status.get("epochs")
    doc = json.loads(report())
    doc["bestCheckpoint"]["uri"] = "s3://attacker/bucket/model"
    run(op, body(), rayjob_status=RUNNING, report_text=json.dumps(doc))
    assert kube.status["phase"] == "Failed" and _reason(kube.status) == "InvalidReport"
    assert "bestCheckpoint.uri is outside this job's storage" in kube.status["message"]


def test_phase_counts_survive_a_restart() -> None:
    kube = FakeKube()
    op = operator(kube)
    run(op, body())
    op2, listed = restarted(kube, body())
    run(op2, listed, rayjob_status=RUNNING)
    run(op2, listed, rayjob_status=COMPLETE, report_text=report("Succeeded", evaluation=SCORES))
    assert dict(op2.state.phase_counts) == {"Succeeded": 1}
    op2.state.forget("uid-1")
    assert dict(op2.state.phase_counts) == {}


@pytest.mark.parametrize(
    "name", ["a", "a" * 253, ("x" * 62 + ".") * 4 + "y", "a-" * 100 + "b", "9start.with.digit"]
)
def test_event_names_are_valid_for_any_legal_job_name(name: str) -> None:
    import re

    event = event_name(name)
    label = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
    assert len(event) <= 253 and re.fullmatch(rf"{label}(\.{label})*", event)
    assert event_name(name) != event, "unique per event"


def test_a_hung_api_server_cannot_hold_a_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request carries a timeout: against a server that accepts and never answers,
    a read, a create and a status patch each give up (then the job's retry backs off)."""
    import socket
    import time

    from kubernetes import client

    from kubetune.controller import kube as kube_module

    monkeypatch.setitem(kube_module.TIMEOUT, "_request_timeout", (1.0, 1.0))
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{server.getsockname()[1]}"
        configuration.retries = 0
        kube = kube_module.Kube(client.ApiClient(configuration))
        calls = [
            lambda: kube.read("RayJob", "ns", "job"),
            lambda: kube.ensure(
                {
                    "apiVersion": "kubetune.dev/v1alpha1",
                    "kind": "FineTuneJobReport",
                    "metadata": {"name": "x", "namespace": "ns"},
                }
            ),
            lambda: kube.replace_status("ns", "job", "uid-1", {"phase": "Pending"}),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(Exception, match=r"(?i)timed? ?out"):
                call()
            # 1 s timeouts; without one the call would hang for good (the bound allows a
            # loaded machine)
            assert time.monotonic() - started < 15


def test_finished_job_is_not_reparsed_or_rewritten_by_a_newer_operator() -> None:
    """A Succeeded job whose spec a later operator version would refuse stays Succeeded."""
    kube = FakeKube()
    op = operator(kube)
    run(op, body())
    run(op, body(), rayjob_status=COMPLETE, report_text=report("Succeeded", evaluation=SCORES))
    before = list(kube.writes)
    op2, listed = restarted(kube, body(compute={"workers": 12}))  # now "invalid"
    run(op2, listed)
    assert kube.writes == before


def test_a_status_finished_elsewhere_is_never_overwritten() -> None:
    """Another replica (or a status this version cannot parse) says Succeeded: hands off."""
    kube = FakeKube()
    op = operator(kube)
    run(op, body())
    before = list(kube.writes)
    finished = {**body(), "status": {"phase": "Succeeded", "someFutureField": 1}}
    run(op, finished, rayjob_status=RUNNING)
    assert kube.writes == before


def test_rayjob_created_before_a_channel_failure_is_never_created_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = FakeKube()
    real = kube.ensure

    def no_reports(obj: dict[str, Any]) -> str:
        if obj["kind"] == "FineTuneJobReport":
            raise ApiException(http_resp=_Response(403, {"message": "exceeded quota"}))
        return real(obj)

    monkeypatch.setattr(kube, "ensure", no_reports)
    op = operator(kube)
    run(op, body())
    assert kube.status["phase"] == "Pending" and "rayJob" in kube.status
    del kube.objects[("RayJob", "job")]
    monkeypatch.setattr(kube, "ensure", real)
    op.state.jobs["uid-1"].retry_pending = False
    run(op, body())
    assert ("RayJob", "job") not in kube.objects, "training would start again"
    assert _reason(kube.status) == "RayJobDeleted"


def test_the_run_is_stopped_before_the_verdict_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed delete leaves the job open (and retried), never Failed with its GPUs held."""
    kube = FakeKube()
    op = operator(kube)
    run(op, body())

    def refuse(namespace: str, name: str, uid: str) -> None:
        raise ApiException(status=503, reason="unavailable")

    monkeypatch.setattr(kube, "delete_rayjob", refuse)
    doc = json.loads(report())
    doc["epochs"][1]["validationPerplexity"] = math.inf
    run(op, body(), rayjob_status=RUNNING, report_text=json.dumps(doc))
    assert kube.status["phase"] != "Failed" and op.state.jobs["uid-1"].retry_pending
    monkeypatch.undo()
    op.state.jobs["uid-1"].retry_pending = False
    run(op, body())
    assert kube.status["phase"] == "Failed" and ("delete", "RayJob") in kube.writes
