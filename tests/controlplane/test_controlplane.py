"""The test control plane behaves like a real cluster where our operator depends on it.

If these fail, failures in the other control-plane tests say nothing about kubetune.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.controlplane import ControlPlane, Kubectl

pytestmark = pytest.mark.controlplane

RAYJOB_GROUP, RAYJOB_VERSION, RAYJOBS = "ray.io", "v1", "rayjobs"


def _eventually(check: Callable[[], bool], timeout: float = 30, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def _gone(read: Callable[[], object]) -> Callable[[], bool]:
    def check() -> bool:
        try:
            read()
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    return check


def _minimal_rayjob(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{RAYJOB_GROUP}/{RAYJOB_VERSION}",
        "kind": "RayJob",
        "metadata": {"name": name},
        "spec": {
            "entrypoint": "python -c 'print(1)'",
            "shutdownAfterJobFinishes": True,
            "rayClusterSpec": {
                "headGroupSpec": {
                    "rayStartParams": {},
                    "template": {
                        "spec": {
                            "containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0"}]
                        }
                    },
                },
            },
        },
    }


def test_server_reports_pinned_version(kube_api: client.ApiClient, kubectl: Kubectl) -> None:
    assert client.VersionApi(kube_api).get_code().git_version == "v1.34.4"
    versions = yaml.safe_load(kubectl("version", "-o", "yaml").stdout)
    assert versions["clientVersion"]["gitVersion"] == "v1.34.4"


def test_rbac_denies_service_account_without_permissions(
    control_plane: ControlPlane, kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="nobody"))
    )
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    status = core.create_namespaced_service_account_token("nobody", namespace, request).status
    assert status is not None
    token = status.token

    cfg = client.Configuration()
    cfg.host = control_plane.server
    cfg.ssl_ca_cert = str(control_plane.ca_path)
    cfg.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(cfg) as sa_api:
        sa_core = client.CoreV1Api(sa_api)
        with pytest.raises(ApiException) as denied:
            sa_core.list_namespaced_secret(namespace)
        assert denied.value.status == 403  # authenticated (not 401), but not authorized

        rbac = client.RbacAuthorizationV1Api(kube_api)
        rbac.create_namespaced_role(
            namespace,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="read-secrets"),
                rules=[client.V1PolicyRule(api_groups=[""], resources=["secrets"], verbs=["list"])],
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="read-secrets"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="read-secrets"
                ),
                subjects=[
                    client.RbacV1Subject(kind="ServiceAccount", name="nobody", namespace=namespace)
                ],
            ),
        )

        def allowed() -> bool:
            try:
                sa_core.list_namespaced_secret(namespace)
            except ApiException as exc:
                if exc.status != 403:
                    raise
                return False
            return True

        assert _eventually(allowed, timeout=10), "a RoleBinding did not grant access"


def test_garbage_collector_deletes_dependents(kube_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    assert owner.metadata is not None
    owner_ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="dependent", owner_references=[owner_ref])
        ),
    )
    core.delete_namespaced_config_map("owner", namespace)
    assert _eventually(_gone(lambda: core.read_namespaced_config_map("dependent", namespace))), (
        "dependent ConfigMap survived its owner for 30 s: is the garbage collector running?"
    )


def test_namespace_deletion_completes(kube_api: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_api)
    name = "kt-doomed"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(
        name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="content"))
    )
    core.delete_namespace(name)
    assert _eventually(_gone(lambda: core.read_namespace(name))), (
        "namespace stuck Terminating for 30 s: is the namespace controller running?"
    )


def test_rayjob_crd_accepts_valid_rayjob(
    kube_api: client.ApiClient, kubectl: Kubectl, namespace: str
) -> None:
    kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(_minimal_rayjob("ok")))
    got = cast(
        dict[str, Any],
        client.CustomObjectsApi(kube_api).get_namespaced_custom_object(
            RAYJOB_GROUP, RAYJOB_VERSION, namespace, RAYJOBS, "ok"
        ),
    )
    assert got["spec"]["shutdownAfterJobFinishes"] is True
    containers = got["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert containers[0]["image"] == "rayproject/ray:2.60.0"


def test_rayjob_crd_rejects_wrong_type(kube_api: client.ApiClient, namespace: str) -> None:
    body = _minimal_rayjob("bad")
    body["spec"]["shutdownAfterJobFinishes"] = "yes"
    with pytest.raises(ApiException) as rejected:
        client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
            RAYJOB_GROUP, RAYJOB_VERSION, namespace, RAYJOBS, body
        )
    assert rejected.value.status == 422
    assert "spec.shutdownAfterJobFinishes" in str(rejected.value.body)
