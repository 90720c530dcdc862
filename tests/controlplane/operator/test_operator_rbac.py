"""The operator runs with exactly the permissions below (not as cluster admin).

The operator runs with exactly the Helm chart's ClusterRole; this test proves it is enough
for a full run. Creating the trainer's Role needs the operator to hold the same ConfigMap
verbs itself (RBAC forbids granting what you do not have), hence get/update/patch there.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.controlplane.operator.helpers import create_job, job_manifest, wait_phase
from tests.support.chart import operator_cluster_role_rules
from tests.support.controlplane import ControlPlane
from tests.support.kuberay_double import KubeRayDouble
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.controlplane


@pytest.fixture
def operator_kubeconfig(
    control_plane: ControlPlane, kube_api: client.ApiClient, tmp_path: Path
) -> Iterator[Path]:
    name = f"kubetune-operator-{uuid.uuid4().hex[:6]}"
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account("default", {"metadata": {"name": name}})
    rules = operator_cluster_role_rules(control_plane.bin_dir / "helm")
    rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "default"}],
        }
    )
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    token = core.create_namespaced_service_account_token(name, "default", request).status.token
    ca = base64.b64encode(control_plane.ca_path.read_bytes()).decode()
    path = tmp_path / "operator.kubeconfig"
    path.write_text(
        f"apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n"
        f"    server: {control_plane.server}\n    certificate-authority-data: {ca}\n"
        f"users:\n- name: u\n  user:\n    token: {token}\n"
        f"contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
    )
    yield path
    rbac.delete_cluster_role_binding(name)
    rbac.delete_cluster_role(name)


def test_operator_needs_no_more_than_its_cluster_role(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    tmp_path: Path,
    operator_kubeconfig: Path,
) -> None:
    ns = f"ktp-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    operator = OperatorProcess(
        control_plane, "ktp-*", tmp_path / "operator.log", {"KUBECONFIG": str(operator_kubeconfig)}
    )
    double = KubeRayDouble(kube_api, ns, control_plane.server, control_plane.ca_path)
    custom = client.CustomObjectsApi(kube_api)
    try:
        operator.start()
        double.start()
        create_job(custom, ns, job_manifest("least-privilege"))
        status = wait_phase(custom, ns, "least-privilege", "Succeeded", timeout=60)
        assert status["bestCheckpoint"]["uri"]
        events = [
            e
            for e in core.list_namespaced_event(ns).items
            if e.involved_object.name == "least-privilege"
        ]
        assert events, "the operator could not post events"
        assert "reconciling" not in operator.logs(), operator.logs()[-3000:]  # no failed tries
    finally:
        double.stop()
        operator.stop()
        core.delete_namespace(ns)
