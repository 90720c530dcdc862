"""reconcile_job against an in-memory fake of the Kubernetes I/O: writes happen once per change.

Marked unit: no control plane, no kopf; it lives here because it tests the operator's loop.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from kubetune.config import OperatorConfig
from kubetune.controller.reconcile import Operator, reconcile_job
from kubetune.controller.state import OperatorState
from tests.controlplane.operator.helpers import job_manifest

pytestmark = pytest.mark.unit


class FakeKube:
    """Records writes; `existing` simulates objects left by a previous operator run."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []

    def ensure(self, obj: dict[str, Any]) -> str:
        key = (obj["kind"], obj["metadata"]["name"])
        if key in self.objects:
            return "adopted"
        self.objects[key] = copy.deepcopy(obj)
        self.writes.append(("create", obj["kind"]))
        return "created"

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, name))

    def set_rayjob_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.objects[("RayJob", name)]["spec"]["suspend"] = suspend
        self.writes.append(("suspend", str(suspend)))

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.writes.append(("status", status.get("phase", "")))

    def post_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.writes.append(("event", reason))


def body(name: str = "job", generation: int = 1, **spec: Any) -> dict[str, Any]:
    doc = job_manifest(name, **spec)
    doc["metadata"].update(namespace="ns", uid="uid-1", generation=generation)
    return doc


def run(op: Operator, doc: dict[str, Any], **observed: Any) -> None:
    key = ("ns", doc["metadata"]["name"])
    js = op.state.get(key)
    js.body = doc
    for attr, value in observed.items():
        setattr(js, attr, value)
    asyncio.run(reconcile_job(op, key))


def operator(kube: FakeKube) -> Operator:
    return Operator(kube, OperatorConfig(), OperatorState())  # type: ignore[arg-type]


def test_creates_children_once_and_writes_status_once() -> None:
    kube = FakeKube()
    op = operator(kube)
    run(op, body())
    assert kube.writes == [
        ("create", "RayJob"),
        ("create", "ConfigMap"),
        ("create", "ServiceAccount"),
        ("create", "Role"),
        ("create", "RoleBinding"),
        ("status", "Pending"),
        ("event", "Pending"),
    ]
    run(op, body())
    run(op, body(), rayjob_status=None)
    assert len(kube.writes) == 7, "nothing changed, so nothing was written"


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
    assert not [w for w in kube.writes if w[0] == "suspend"]


def test_errors_are_retried_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = FakeKube()

    def refuse(obj: dict[str, Any]) -> str:
        raise ApiException(status=500, reason="etcd unavailable")

    monkeypatch.setattr(kube, "ensure", refuse)
    op = operator(kube)
    run(op, body())
    assert op.state.get(("ns", "job")).failures == 1
