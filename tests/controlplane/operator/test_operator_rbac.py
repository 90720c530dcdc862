"""The operator runs with exactly the Helm chart's RBAC (not as cluster admin), in both modes.

Cluster-wide: the chart's ClusterRole. watchNamespaces: the ClusterRole's read-only discovery
rules plus a Role in the watched namespace. Either way a full run must succeed, which proves
the rules are enough; the chart test proves they are no more than listed.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.utils import create_from_dict

from tests.controlplane.operator.helpers import create_job, job_manifest, wait_phase
from tests.support.chart import operator_rbac
from tests.support.controlplane import ControlPlane
from tests.support.kuberay_double import KubeRayDouble
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.controlplane


def _as_account(obj: dict[str, Any], name: str, namespace: str) -> dict[str, Any]:
    """The chart's object, renamed for this test and bound to this test's account."""
    obj = {**obj, "metadata": {**obj["metadata"], "name": name}}
    if "roleRef" in obj:
        obj["roleRef"] = {**obj["roleRef"], "name": name}
        obj["subjects"] = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    return obj


def _kubeconfig(control_plane: ControlPlane, token: str, path: Path) -> Path:
    ca = base64.b64encode(control_plane.ca_path.read_bytes()).decode()
    path.write_text(
        f"apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n"
        f"    server: {control_plane.server}\n    certificate-authority-data: {ca}\n"
        f"users:\n- name: u\n  user:\n    token: {token}\n"
        f"contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
    )
    return path


@pytest.fixture(params=["cluster-wide", "watch-namespaces"])
def chart_rbac_run(
    request: pytest.FixtureRequest,
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    tmp_path: Path,
) -> Iterator[tuple[str, Path, str]]:
    """(namespace, kubeconfig of an account with exactly the chart's RBAC, namespaces to watch)."""
    ns = f"ktp-{uuid.uuid4().hex[:8]}"
    name = f"kubetune-operator-{uuid.uuid4().hex[:6]}"
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    core.create_namespaced_service_account("default", {"metadata": {"name": name}})
    scoped = request.param == "watch-namespaces"
    objects = operator_rbac(control_plane.bin_dir / "helm", (ns,) if scoped else ())
    assert [o["kind"] for o in objects].count("Role") == (1 if scoped else 0)
    for obj in objects:
        create_from_dict(kube_api, _as_account(obj, name, "default"))
    request_ = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    token = core.create_namespaced_service_account_token(name, "default", request_).status.token
    yield (
        ns,
        _kubeconfig(control_plane, token, tmp_path / "operator.kubeconfig"),
        (ns if scoped else "ktp-*"),
    )
    rbac.delete_cluster_role_binding(name)
    rbac.delete_cluster_role(name)
    core.delete_namespace(ns)


def test_operator_needs_no_more_than_the_charts_rbac(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    tmp_path: Path,
    chart_rbac_run: tuple[str, Path, str],
) -> None:
    ns, kubeconfig, watched = chart_rbac_run
    core = client.CoreV1Api(kube_api)
    operator = OperatorProcess(
        control_plane, watched, tmp_path / "operator.log", {"KUBECONFIG": str(kubeconfig)}
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
