"""Kill -9 the operator at several points of a run: exactly one RayJob, correct final status."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.controlplane.operator.helpers import (
    RAY,
    RAYJOBS,
    create_job,
    job_manifest,
    rayjobs,
    status_of,
    wait_for,
    wait_phase,
)
from tests.support.controlplane import ControlPlane, temporary_namespace
from tests.support.kuberay_double import KubeRayDouble, Script
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.controlplane


@pytest.fixture
def own_namespace(kube_api: client.ApiClient) -> Iterator[str]:
    """Not kt-*: the session operator must not see it, only the one this test restarts."""
    with temporary_namespace(kube_api, "ktr") as name:
        yield name


def test_restarts_never_duplicate(
    control_plane: ControlPlane, kube_api: client.ApiClient, own_namespace: str, tmp_path: Path
) -> None:
    ns = own_namespace
    custom = client.CustomObjectsApi(kube_api)
    operator = OperatorProcess(control_plane, ns, tmp_path / "operator.log")
    double = KubeRayDouble(kube_api, ns, control_plane.server, control_plane.ca_path)
    double.script("restart", Script(hold_at="Running"))
    try:
        # 1. the job exists before any operator runs
        create_job(custom, ns, job_manifest("restart"))
        operator.start()
        (first,) = wait_for(lambda: rayjobs(custom, ns), what="RayJob")
        uid = first["metadata"]["uid"]
        # 2. killed right after creating the RayJob
        operator.kill()
        operator.start()
        wait_phase(custom, ns, "restart", "Pending")
        double.start()
        # 3. killed while training
        wait_for(lambda: double.is_held("restart"), what="training")
        wait_phase(custom, ns, "restart", "Training")
        operator.kill()
        double.release("restart")
        operator.start()
        status = wait_phase(custom, ns, "restart", "Succeeded")
        # 4. killed after completion
        operator.kill()
        operator.start()
        time.sleep(2)  # let it list and reconcile everything again
        assert status_of(custom, ns, "restart") == status
        (only,) = rayjobs(custom, ns)
        assert only["metadata"]["uid"] == uid, "the RayJob was re-created"
        # 5. the finished RayJob is deleted (by hand, or KubeRay's deletionStrategy) while
        # no operator runs: a new one must not train the finished job again
        operator.kill()
        custom.delete_namespaced_custom_object(*RAY, ns, RAYJOBS, only["metadata"]["name"])
        wait_for(lambda: not rayjobs(custom, ns), what="RayJob gone")
        operator.start()
        time.sleep(2)
        assert rayjobs(custom, ns) == [], "a finished job was trained again"
        assert status_of(custom, ns, "restart") == status
        assert "Traceback" not in operator.logs(), operator.logs()[-3000:]
    finally:
        double.stop()
        operator.stop()


def test_kopf_run_entry_point(
    control_plane: ControlPlane, kube_api: client.ApiClient, own_namespace: str, tmp_path: Path
) -> None:
    """`kopf run -m kubetune.controller.handlers` is a supported way to start the operator."""
    probe = OperatorProcess(control_plane, own_namespace, tmp_path / "kopf.log")
    probe.command = [
        sys.executable,
        "-m",
        "kopf",
        "run",
        "-m",
        "kubetune.controller.handlers",
        "--standalone",
        "--namespace",
        own_namespace,
        f"--liveness=http://127.0.0.1:{probe.health_port}/healthz",
    ]
    custom = client.CustomObjectsApi(kube_api)
    try:
        probe.start()
        create_job(custom, own_namespace, job_manifest("via-kopf"))
        wait_for(lambda: rayjobs(custom, own_namespace), what="RayJob")
        wait_phase(custom, own_namespace, "via-kopf", "Pending")
    finally:
        probe.stop()
