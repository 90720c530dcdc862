"""The trainer's RBAC, judged by the real authorizer; the golden objects, by the real API server."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune.api.v1alpha1 import GROUP
from kubetune_trainer import reporting
from kubetune_trainer.job_source import JobSourceError, read_own_job
from tests.controlplane.operator.helpers import (
    REPO_ROOT,
    create_job,
    get_job,
    job_manifest,
    wait_for,
)
from tests.support.controlplane import ControlPlane
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.controlplane

GOLDEN = sorted((REPO_ROOT / "tests" / "golden").glob("*.yaml"))


def can(
    kube_api: client.ApiClient,
    user: str,
    namespace: str,
    verb: str,
    resource: str,
    name: str = "",
    group: str = "",
) -> bool:
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace, verb=verb, resource=resource, name=name or None, group=group
            ),
        )
    )
    result = client.AuthorizationV1Api(kube_api).create_subject_access_review(review)
    return bool(result.status.allowed)


def test_trainer_can_update_its_report_and_nothing_else(
    operator_process: OperatorProcess,
    custom: client.CustomObjectsApi,
    kube_api: client.ApiClient,
    namespace: str,
    control_plane: ControlPlane,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("alpha", "beta"):
        create_job(custom, namespace, job_manifest(name))
    rbac = client.RbacAuthorizationV1Api(kube_api)
    for name in ("alpha", "beta"):
        wait_for(
            lambda n=name: rbac.read_namespaced_role_binding(f"{n}-trainer", namespace),
            what="trainer RoleBinding",
        )
    sa = f"system:serviceaccount:{namespace}:alpha-trainer"
    for verb in ("get", "update", "patch"):
        assert can(kube_api, sa, namespace, verb, "finetunejobreports", "alpha-report", GROUP)
    assert can(kube_api, sa, namespace, "get", "finetunejobs", "alpha", "kubetune.dev")
    denied: list[tuple[str, str, str, str]] = [
        ("get", "finetunejobs", "beta", "kubetune.dev"),
        ("list", "finetunejobs", "", "kubetune.dev"),
        ("watch", "finetunejobs", "", "kubetune.dev"),
        ("update", "finetunejobreports", "beta-report", GROUP),
        ("create", "finetunejobreports", "", GROUP),
        ("delete", "finetunejobreports", "alpha-report", GROUP),
        ("list", "finetunejobreports", "", GROUP),
        ("watch", "finetunejobreports", "", GROUP),
        ("get", "configmaps", "alpha-report", ""),
        ("patch", "configmaps", "alpha-report", ""),
        ("get", "secrets", "hf-token", ""),
        ("list", "secrets", "", ""),
        ("update", "finetunejobs", "alpha", "kubetune.dev"),
        ("patch", "finetunejobs/status", "alpha", "kubetune.dev"),
        ("patch", "rayjobs", "alpha", "ray.io"),
    ]
    for verb, resource, name, group in denied:
        assert not can(kube_api, sa, namespace, verb, resource, name, group), (verb, resource, name)
    assert_real_token_is_limited(kube_api, namespace, control_plane, monkeypatch)


def assert_real_token_is_limited(
    kube_api: client.ApiClient,
    namespace: str,
    control_plane: ControlPlane,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same, with a real token of the trainer's ServiceAccount (TokenRequest)."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    token = (
        client.CoreV1Api(kube_api)
        .create_namespaced_service_account_token("alpha-trainer", namespace, request)
        .status.token
    )
    cfg = client.Configuration()
    cfg.host, cfg.ssl_ca_cert = control_plane.server, str(control_plane.ca_path)
    cfg.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(cfg) as api:
        own = client.CustomObjectsApi(api)
        reports = (GROUP, "v1alpha1", namespace, "finetunejobreports")
        own.patch_namespaced_custom_object(*reports, "alpha-report", {"report": "{}"})
        with pytest.raises(ApiException) as refused:
            own.patch_namespaced_custom_object(*reports, "beta-report", {"report": "{}"})
        assert refused.value.status == 403
        # The trainer reads its own job (and checks its uid), and no other
        alpha = client.CustomObjectsApi(kube_api).get_namespaced_custom_object(
            "kubetune.dev", "v1alpha1", namespace, "finetunejobs", "alpha"
        )
        uid = alpha["metadata"]["uid"]
        assert read_own_job("alpha", namespace, uid, api=api)["spec"] == alpha["spec"]
        with pytest.raises(JobSourceError, match="deleted and created again"):
            read_own_job("alpha", namespace, "uid-of-an-earlier-alpha", api=api)
        with monkeypatch.context() as patch, pytest.raises(JobSourceError, match="HTTP 403"):
            patch.setattr(reporting, "RETRY_DELAYS_S", (0.1,))  # 403 is retried at first
            read_own_job("beta", namespace, None, api=api)


def test_a_trainer_starting_during_an_api_outage_reads_its_job_once_the_api_is_back(
    custom: client.CustomObjectsApi,
    kube_api: client.ApiClient,
    namespace: str,
    control_plane: ControlPlane,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the short retries (RBAC races, hiccups), a connection refused is an outage: the
    trainer keeps trying instead of failing the job as 'invalid spec'."""
    create_job(custom, namespace, job_manifest("gamma"))
    uid = get_job(custom, namespace, "gamma")["metadata"]["uid"]
    monkeypatch.setattr(reporting, "RETRY_DELAYS_S", (0.1,))
    monkeypatch.setattr(reporting, "OUTAGE_RETRY_S", 0.5)
    read: list[dict[str, Any]] = []
    with control_plane.apiserver_down():
        reader = threading.Thread(
            target=lambda: read.append(read_own_job("gamma", namespace, uid, api=kube_api))
        )
        reader.start()
        time.sleep(3)  # well past the short retries
        assert reader.is_alive() and not read
    reader.join(timeout=120)
    assert read and read[0]["metadata"]["name"] == "gamma"


def _golden_objects() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.stem}:{doc['kind']}", doc)
        for path in GOLDEN
        for doc in yaml.safe_load_all(path.read_text())
    ]


def test_golden_files_exist() -> None:
    assert len(GOLDEN) >= 5


@pytest.mark.parametrize(
    ("label", "obj"), _golden_objects(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_golden_object_accepted_by_api_server(
    kube_api: client.ApiClient, namespace: str, label: str, obj: dict[str, Any]
) -> None:
    """Server-side dry-run create: schema (the real KubeRay CRD), defaulting and admission."""
    obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
    if obj["kind"] == "RayJob":
        client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
            "ray.io", "v1", namespace, "rayjobs", obj, dry_run="All"
        )
    elif obj["kind"] == "FineTuneJobReport":
        client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
            "kubetune.dev", "v1alpha1", namespace, "finetunejobreports", obj, dry_run="All"
        )
    elif obj["kind"] == "NetworkPolicy":
        client.NetworkingV1Api(kube_api).create_namespaced_network_policy(
            namespace, obj, dry_run="All"
        )
    elif obj["kind"] == "ServiceAccount":
        client.CoreV1Api(kube_api).create_namespaced_service_account(namespace, obj, dry_run="All")
    elif obj["kind"] == "Role":
        client.RbacAuthorizationV1Api(kube_api).create_namespaced_role(
            namespace, obj, dry_run="All"
        )
    elif obj["kind"] == "RoleBinding":
        client.RbacAuthorizationV1Api(kube_api).create_namespaced_role_binding(
            namespace, obj, dry_run="All"
        )
    else:
        pytest.fail(f"unexpected kind in {label}")
