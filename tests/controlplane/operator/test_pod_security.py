"""Every pod KubeRay makes from our RayJob passes the `restricted` Pod Security Standard,
judged by the real API server's PodSecurity admission (server-side dry-run)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune.builders.rayjob import build_rayjob
from kubetune.config import OperatorConfig
from tests.support.controlplane import temporary_namespace
from tests.support.kuberay_pods import kuberay_pods
from tests.unit.builders.helpers import example_job

pytestmark = pytest.mark.controlplane

EXAMPLES = ["gsm8k-llama2-7b", "sql-llama2-7b-lora-1gpu", "local-cluster"]


@pytest.fixture(scope="module")
def restricted_namespace(kube_api: client.ApiClient) -> Iterator[str]:
    with temporary_namespace(kube_api, "pss") as name:
        labels = {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }
        client.CoreV1Api(kube_api).patch_namespace(name, {"metadata": {"labels": labels}})
        yield name


def _pods(example: str) -> list[dict[str, Any]]:
    return kuberay_pods(build_rayjob(example_job(example), OperatorConfig()))


def _dry_run(kube_api: client.ApiClient, namespace: str, pod: dict[str, Any]) -> None:
    client.CoreV1Api(kube_api).create_namespaced_pod(namespace, pod, dry_run="All")


@pytest.mark.parametrize("example", EXAMPLES)
def test_pods_pass_restricted(
    kube_api: client.ApiClient, restricted_namespace: str, example: str
) -> None:
    for pod in _pods(example):
        _dry_run(kube_api, restricted_namespace, pod)


def _without_security(pod: dict[str, Any]) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    pod["spec"].pop("securityContext", None)
    for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
        container.pop("securityContext", None)
    return pod


def test_the_namespace_really_enforces(
    kube_api: client.ApiClient, restricted_namespace: str
) -> None:
    """The same pods without kubetune's securityContexts are refused: the check above can fail."""
    for pod in _pods("gsm8k-llama2-7b"):
        with pytest.raises(ApiException) as refused:
            _dry_run(kube_api, restricted_namespace, _without_security(pod))
        assert refused.value.status == 403
        message = json.loads(refused.value.body)["message"]
        assert 'violates PodSecurity "restricted:latest"' in message, message
