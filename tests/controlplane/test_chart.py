"""The Helm chart: lints, renders, refuses bad values, installs on the real API server, and
grants the operator every permission it uses (checked with the real RBAC authorizer)."""

from __future__ import annotations

import subprocess

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


def test_chart_installs_and_the_operator_may_do_its_job(control_plane, kube_api, namespace):
    release = f"kt-{namespace[-6:]}"
    # No --kube-version: helm asks the server, whose version must satisfy the chart's kubeVersion.
    install = helm(control_plane, "install", release, str(CHART), "-n", namespace)
    assert install.returncode == 0, install.stderr
    try:
        apps = client.AppsV1Api(kube_api)
        deployment = apps.read_namespaced_deployment(f"{release}-operator", namespace)
        assert deployment.spec.replicas == 1
        env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
        # Empty strings come back as unset values.
        assert not env["KUBETUNE_PEERING"] and not env["KUBETUNE_NAMESPACES"]
        user = f"system:serviceaccount:{namespace}:{release}-operator"
        authz = client.AuthorizationV1Api(kube_api)

        def allowed(group: str, resource: str, verb: str, subresource: str = "") -> bool:
            review = client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(
                    user=user,
                    groups=["system:serviceaccounts"],
                    resource_attributes=client.V1ResourceAttributes(
                        group=group,
                        resource=resource,
                        verb=verb,
                        subresource=subresource or None,
                        namespace="some-team",
                    ),
                )
            )
            return bool(authz.create_subject_access_review(review).status.allowed)

        for group, resource, verbs in [
            ("kubetune.dev", "finetunejobs", ["get", "list", "watch"]),
            ("ray.io", "rayjobs", ["get", "list", "watch", "create", "patch", "delete"]),
            ("", "configmaps", ["get", "create", "patch"]),
            ("", "serviceaccounts", ["get", "create"]),
            ("rbac.authorization.k8s.io", "roles", ["get", "create"]),
            ("rbac.authorization.k8s.io", "rolebindings", ["get", "create"]),
            ("", "events", ["create"]),
        ]:
            for verb in verbs:
                assert allowed(group, resource, verb), (resource, verb)
        assert allowed("kubetune.dev", "finetunejobs", "patch", "status")
        assert not allowed("", "secrets", "get"), "the operator must not read secrets"
        assert not allowed("kubetune.dev", "finetunejobs", "patch"), "it writes only .status"
        assert not allowed("", "pods", "create")
        for resource in ("serviceaccounts", "roles", "rolebindings"):
            group = "" if resource == "serviceaccounts" else "rbac.authorization.k8s.io"
            assert not allowed(group, resource, "patch"), f"no adoption by patching {resource}"
    finally:
        uninstall = helm(control_plane, "uninstall", release, "-n", namespace)
        assert uninstall.returncode == 0, uninstall.stderr
