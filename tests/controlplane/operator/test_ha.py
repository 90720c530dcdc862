"""Two replicas with kopf peering: one works, the other stands by and takes over."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.controlplane.operator.helpers import (
    create_job,
    job_manifest,
    rayjobs,
    wait_for,
    wait_phase,
)
from tests.support.chart import peering_crds_yaml
from tests.support.controlplane import ControlPlane, Kubectl
from tests.support.kuberay_double import KubeRayDouble, Script
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.controlplane


def peers(custom: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    """The replicas registered in the KopfPeering object (operator id -> info)."""
    obj = custom.get_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings", "kubetune"
    )
    return dict(obj.get("status") or {})


@pytest.fixture
def ha_namespace(kube_api: client.ApiClient, kubectl: Kubectl) -> Iterator[str]:
    kubectl("apply", "--server-side", "-f", "-", input=peering_crds_yaml())
    kubectl("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev")
    name = f"kth-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    kubectl(
        "apply",
        "-n",
        name,
        "-f",
        "-",
        input="apiVersion: kopf.dev/v1\nkind: KopfPeering\nmetadata: {name: kubetune}\n",
    )
    yield name
    core.delete_namespace(name)


def test_standby_replica_pauses_and_takes_over(
    control_plane: ControlPlane, kube_api: client.ApiClient, ha_namespace: str, tmp_path: Path
) -> None:
    ns = ha_namespace
    custom = client.CustomObjectsApi(kube_api)
    peering = {"KUBETUNE_PEERING": "kubetune", "KUBETUNE_PEERING_LIFETIME": "5"}
    leader = OperatorProcess(
        control_plane, ns, tmp_path / "leader.log", {**peering, "KUBETUNE_PEERING_PRIORITY": "200"}
    )
    standby = OperatorProcess(
        control_plane, ns, tmp_path / "standby.log", {**peering, "KUBETUNE_PEERING_PRIORITY": "100"}
    )
    double = KubeRayDouble(kube_api, ns, control_plane.server, control_plane.ca_path)
    double.script("ha", Script(hold_at="Running"))
    try:
        leader.start()
        wait_for(lambda: "Resuming operations" in leader.logs(), what="leader to go active")
        standby.start()
        wait_for(lambda: len(peers(custom, ns)) == 2, what="both replicas in the peering")
        assert sorted(p["priority"] for p in peers(custom, ns).values()) == [100, 200]
        create_job(custom, ns, job_manifest("ha"))
        wait_for(lambda: rayjobs(custom, ns), what="RayJob")
        double.start()
        wait_phase(custom, ns, "ha", "Training")
        assert "Resuming operations" not in standby.logs(), "the standby was active too"
        leader.kill()
        double.release("ha")
        # The dead leader's record expires after the 5 s lifetime; the standby notices on its
        # next keep-alive. Seen once not to happen within 40 s on a loaded machine: the wait is
        # longer, and a failure says what the standby and the peering showed.
        try:
            wait_for(lambda: "Resuming operations" in standby.logs(), timeout=90, what="takeover")
        except AssertionError as error:
            raise AssertionError(
                f"{error}; peers: {peers(custom, ns)}; standby log:\n{standby.logs()[-4000:]}"
            ) from error
        status = wait_phase(custom, ns, "ha", "Succeeded", timeout=60)
        assert status["rayJob"]["attempts"] == 1
        assert len(rayjobs(custom, ns)) == 1
    finally:
        double.stop()
        leader.stop()
        standby.stop()
