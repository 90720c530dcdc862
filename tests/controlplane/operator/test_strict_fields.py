"""The operator writes RayJobs with fieldValidation=Strict: a field the installed KubeRay CRD
does not know (an operator newer than the cluster's KubeRay) is refused with the field's name,
never silently pruned, and nothing is created."""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune.controller.kube import RAY_GROUP, RAY_PLURAL, RAY_VERSION, Kube


def _rayjob(namespace: str, **spec: object) -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "strict-check", "namespace": namespace},
        "spec": {"entrypoint": "true", "shutdownAfterJobFinishes": True, **spec},
    }


def test_unknown_rayjob_field_is_refused_not_pruned(
    kube_api: client.ApiClient, namespace: str
) -> None:
    kube = Kube(kube_api)
    with pytest.raises(ApiException) as refused:
        kube.ensure(_rayjob(namespace, notAKubeRayField=1))
    # Strict validation answers 400 BadRequest naming the field (422 is for schema violations).
    assert refused.value.status == 400
    message = json.loads(refused.value.body)["message"]
    assert 'strict decoding error: unknown field "spec.notAKubeRayField"' in message
    custom = client.CustomObjectsApi(kube_api)
    with pytest.raises(ApiException) as missing:
        custom.get_namespaced_custom_object(
            RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, "strict-check"
        )
    assert missing.value.status == 404


def test_known_fields_pass_and_suspend_patch_is_strict(
    kube_api: client.ApiClient, namespace: str
) -> None:
    kube = Kube(kube_api)
    assert kube.ensure(_rayjob(namespace, preRunningDeadlineSeconds=600)) == "created"
    kube.set_rayjob_suspend(namespace, "strict-check", True)
    rayjob = kube.read("RayJob", namespace, "strict-check")
    assert rayjob is not None and rayjob["spec"]["suspend"] is True
    assert rayjob["spec"]["preRunningDeadlineSeconds"] == 600
