"""The Helm chart: lints, renders, refuses bad values, installs on the real API server, and
grants the operator every permission it uses (checked with the real RBAC authorizer)."""

from __future__ import annotations

import subprocess
import time

import pytest
import yaml
from kubernetes import client

from tests.support.chart import CHART, KUBE_VERSION

pytestmark = pytest.mark.controlplane


def helm(control_plane, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(control_plane.bin_dir / "helm"), *args],
        capture_output=True,
        text=True,
        env=control_plane.env(),
        timeout=180,
        check=False,
    )


def test_chart_lints_and_renders(control_plane):
    lint = helm(control_plane, "lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = helm(
        control_plane,
        "template",
        "kt",
        str(CHART),
        "-n",
        "kubetune-system",
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "replicaCount=2",
    )
    assert rendered.returncode == 0, rendered.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered.stdout) if doc}
    assert kinds == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ClusterKopfPeering",
    }
    deployment = next(
        d for d in yaml.safe_load_all(rendered.stdout) if d and d["kind"] == "Deployment"
    )
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KUBETUNE_PEERING"] == "kubetune"
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize(
    "bad", ["replicaCount=5", "image.pullPolicy=Sometimes", "trainerimage=x", "cpuHeadroom=0.9"]
)
def test_values_schema_refuses_bad_values(control_plane, bad):
    result = helm(
        control_plane, "template", "kt", str(CHART), "--kube-version", KUBE_VERSION, "--set", bad
    )
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr


# What the operator may do in a namespace it serves: each verb is used (or granted to the
# trainer, which RBAC requires it to hold).
GRANTED = [
    ("kubetune.dev", "finetunejobs", "", ["get", "list", "watch"]),
    ("kubetune.dev", "finetunejobs", "status", ["get", "patch", "update"]),
    ("kubetune.dev", "finetunejobs", "finalizers", ["update"]),
    ("kubetune.dev", "finetunejobreports", "", ["get", "list", "watch", "create", "patch"]),
    ("ray.io", "rayjobs", "", ["get", "list", "watch", "create", "patch", "delete"]),
    ("", "serviceaccounts", "", ["get", "create"]),
    ("rbac.authorization.k8s.io", "roles", "", ["get", "create"]),
    ("rbac.authorization.k8s.io", "rolebindings", "", ["get", "create"]),
    ("networking.k8s.io", "networkpolicies", "", ["get", "create"]),
    ("", "pods", "", ["get", "list", "watch"]),
    ("", "events", "", ["create", "list"]),
    ("kueue.x-k8s.io", "workloads", "", ["list", "patch"]),
]
# What it must never be able to do, anywhere.
DENIED = (
    [("", "configmaps", "", verb) for verb in ("get", "create", "update", "patch", "delete")]
    + [("", "secrets", "", verb) for verb in ("get", "list", "create", "update", "patch")]
    + [
        ("kubetune.dev", "finetunejobs", "", "patch"),  # it writes only .status
        ("", "pods", "", "create"),
        ("", "pods", "exec", "create"),
        ("", "serviceaccounts", "", "patch"),  # no adoption by patching
        ("rbac.authorization.k8s.io", "roles", "", "patch"),
        ("rbac.authorization.k8s.io", "rolebindings", "", "patch"),
        ("rbac.authorization.k8s.io", "clusterroles", "", "create"),
        ("networking.k8s.io", "networkpolicies", "", "delete"),
        ("kueue.x-k8s.io", "workloads", "", "delete"),  # only spec.active, never the Workload
    ]
)


def _access_checker(kube_api, user: str):
    authz = client.AuthorizationV1Api(kube_api)

    def allowed(namespace: str, group: str, resource: str, subresource: str, verb: str) -> bool:
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user,
                groups=["system:serviceaccounts"],
                resource_attributes=client.V1ResourceAttributes(
                    group=group,
                    resource=resource,
                    verb=verb,
                    subresource=subresource or None,
                    namespace=namespace or None,
                ),
            )
        )
        return bool(authz.create_subject_access_review(review).status.allowed)

    return allowed


@pytest.mark.parametrize("mode", ["cluster-wide", "watch-namespaces"])
def test_chart_installs_and_the_operator_may_do_its_job(control_plane, kube_api, namespace, mode):
    """Checked with the real RBAC authorizer (SubjectAccessReview) on the installed chart."""
    release = f"kt-{namespace[-6:]}"
    served = f"{namespace}-team"
    scoped = mode == "watch-namespaces"
    core = client.CoreV1Api(kube_api)
    if scoped:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=served)))
    values = ["--set", f"watchNamespaces={{{served}}}"] if scoped else []
    # No --kube-version: helm asks the server, whose version must satisfy the chart's kubeVersion.
    install = helm(control_plane, "install", release, str(CHART), "-n", namespace, *values)
    assert install.returncode == 0, install.stderr
    try:
        apps = client.AppsV1Api(kube_api)
        deployment = apps.read_namespaced_deployment(f"{release}-operator", namespace)
        assert deployment.spec.replicas == 1
        env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
        # Empty strings come back as unset values.
        assert not env["KUBETUNE_PEERING"]
        assert env["KUBETUNE_NAMESPACES"] == (served if scoped else None)
        allowed = _access_checker(kube_api, f"system:serviceaccount:{namespace}:{release}-operator")
        elsewhere = ["kube-system", "other-team"]
        for group, resource, subresource, verbs in GRANTED:
            for verb in verbs:
                assert allowed(
                    served if scoped else "some-team", group, resource, subresource, verb
                ), (
                    resource,
                    subresource,
                    verb,
                )
                if scoped:
                    for other in elsewhere:
                        assert not allowed(other, group, resource, subresource, verb), (
                            f"{verb} {resource} in {other}: watchNamespaces grants nothing there"
                        )
        for ns in [served, *elsewhere, ""]:
            for group, resource, subresource, verb in DENIED:
                assert not allowed(ns, group, resource, subresource, verb), (ns, resource, verb)
        # Cluster-scoped discovery stays readable in both modes (kopf needs it).
        assert allowed("", "apiextensions.k8s.io", "customresourcedefinitions", "", "list")
    finally:
        uninstall = helm(control_plane, "uninstall", release, "-n", namespace)
        assert uninstall.returncode == 0, uninstall.stderr
        if scoped:
            core.delete_namespace(served)


def test_admission_policy_limits_images_and_gpus(control_plane, kube_api, namespace):
    """The chart's optional ValidatingAdmissionPolicy, on the real API server: a job with an
    image outside the allowed prefixes, or more GPUs than allowed, is denied with a message
    naming the field; a job within the limits (and one using the default image) is created."""
    from kubernetes.client.rest import ApiException

    from tests.controlplane.operator.helpers import job_manifest

    release = f"kt-{namespace[-6:]}"
    served = f"{namespace}-adm"
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=served)))
    install = helm(
        control_plane,
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--set",
        f"watchNamespaces={{{served}}}",
        "--set",
        "admissionPolicy.enabled=true",
        "--set",
        "admissionPolicy.allowedImagePrefixes={registry.internal/ml/}",
        "--set",
        "admissionPolicy.maxGPUsPerJob=16",
    )
    assert install.returncode == 0, install.stderr
    custom = client.CustomObjectsApi(kube_api)

    def create(name, **compute):
        doc = job_manifest(name)
        doc["spec"]["compute"].update(compute)
        return custom.create_namespaced_custom_object(
            "kubetune.dev", "v1alpha1", served, "finetunejobs", doc, dry_run="All"
        )

    def denial(name, **compute):
        """The policy's answer; it takes effect a moment after install (bounded wait)."""
        deadline = time.monotonic() + 30
        while True:
            try:
                create(name, **compute)
            except ApiException as error:
                return error
            if time.monotonic() > deadline:
                raise AssertionError(f"{compute} was never denied")
            time.sleep(0.5)

    try:
        error = denial("bad-image", image="docker.io/evil/miner:latest")
        assert error.status in (403, 422)
        assert "spec.compute.image: not from an allowed registry" in error.body
        assert "registry.internal/ml/" in error.body
        error = denial("too-many-gpus", workers=24)
        assert "spec.compute.workers: 24 GPUs asked, at most 16" in error.body
        create("allowed", image="registry.internal/ml/trainer:1", workers=16)
        create("default-image")  # spec.compute.image unset: the operator's own image
        create(
            "cpu-only",
            workers=32,
            nodePool={"instanceType": "m5.4xlarge", "gpusPerNode": 0, "cpu": "4", "memory": "16Gi"},
        )
    finally:
        uninstall = helm(control_plane, "uninstall", release, "-n", namespace)
        assert uninstall.returncode == 0, uninstall.stderr
        core.delete_namespace(served)
