"""Metadata shared by every object the operator owns: names, labels, ownerReferences.

The ownerReference (controller, blockOwnerDeletion) lets the garbage collector delete the
RayJob, the FineTuneJobReport and the RBAC objects with their FineTuneJob, so the operator
needs no finalizer. Without a uid (`kubetune render` of a file) there is no owner yet and
the reference is left out.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1 import API_VERSION, KIND, FineTuneJob
from kubetune.builders.naming import rayjob_name

JOB_LABEL = "kubetune.dev/finetunejob"
# On the Ray pods (KubeRay copies template labels): the operator routes a pod's watch events
# to its job by uid, so a job deleted and created again never sees the old pods.
JOB_UID_LABEL = "kubetune.dev/job-uid"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY = "kubetune-operator"
DEFAULT_NAMESPACE = "default"
LABEL_VALUE_LIMIT = 63


def namespace_of(job: FineTuneJob) -> str:
    return job.metadata.namespace or DEFAULT_NAMESPACE


def uid_of(job: FineTuneJob) -> str | None:
    extra = job.metadata.model_extra or {}
    uid = extra.get("uid")
    return str(uid) if uid else None


def job_label_value(job_name: str) -> str:
    """Label values stop at 63 characters; longer job names use their (unique) RayJob name."""
    return job_name if len(job_name) <= LABEL_VALUE_LIMIT else rayjob_name(job_name)


def labels_for(job: FineTuneJob, component: str) -> dict[str, str]:
    value = job_label_value(job.metadata.name)
    return {
        "app.kubernetes.io/name": "kubetune",
        "app.kubernetes.io/instance": value,
        COMPONENT_LABEL: component,
        "app.kubernetes.io/part-of": "kubetune",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        JOB_LABEL: value,
    }


def pod_labels(job: FineTuneJob, component: str) -> dict[str, str]:
    uid = uid_of(job)
    return {**labels_for(job, component), **({JOB_UID_LABEL: uid} if uid else {})}


def owner_references(job: FineTuneJob) -> list[dict[str, Any]]:
    uid = uid_of(job)
    if uid is None:
        return []
    return [
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": job.metadata.name,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def object_meta(
    job: FineTuneJob, name: str, component: str, extra_labels: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace_of(job),
        "labels": {**labels_for(job, component), **(extra_labels or {})},
    }
    owners = owner_references(job)
    if owners:
        meta["ownerReferences"] = owners
    return meta
