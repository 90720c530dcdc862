"""The pods KubeRay v1.6.2 makes from a RayJob, for admission tests where no KubeRay runs.

Read from KubeRay's source (ray-operator/controllers/ray/common/pod.go, rayjob_controller.go,
tag v1.6.2): the head and worker pods are their templates plus a `shared-mem` memory emptyDir
at /dev/shm and the Ray token env (RAY_AUTH_MODE, RAY_AUTH_TOKEN from KubeRay's Secret); each
worker also gets the `wait-gcs-ready` init container, which copies the Ray container's image,
env, mounts and *container* securityContext; the K8sJobMode submitter is its template with
PYTHONUNBUFFERED, RAY_DASHBOARD_ADDRESS, RAY_JOB_SUBMISSION_ID and the token env appended.
The cluster tier checks the same with the real KubeRay and real pods.
"""

from __future__ import annotations

import copy
from typing import Any

TOKEN_ENV = [
    {"name": "RAY_AUTH_MODE", "value": "token"},
    {
        "name": "RAY_AUTH_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "ray-cluster-abcde", "key": "auth_token"}},
    },
]


def _ray_pod(template: dict[str, Any], name: str, worker: bool) -> dict[str, Any]:
    spec = copy.deepcopy(template["spec"])
    ray = spec["containers"][0]
    ray.setdefault("env", []).extend(copy.deepcopy(TOKEN_ENV))
    ray.setdefault("volumeMounts", []).append({"name": "shared-mem", "mountPath": "/dev/shm"})
    spec.setdefault("volumes", []).append({"name": "shared-mem", "emptyDir": {"medium": "Memory"}})
    if worker:
        spec["initContainers"] = [
            {
                "name": "wait-gcs-ready",
                "image": ray["image"],
                "command": ["/bin/bash", "-lc", "--"],
                "args": ["until ray health-check --address head:6379; do sleep 5; done"],
                "env": copy.deepcopy(ray["env"]),
                "volumeMounts": copy.deepcopy(ray["volumeMounts"]),
                "resources": {"limits": {"cpu": "200m", "memory": "256Mi"}},
                "securityContext": copy.deepcopy(ray.get("securityContext")),
            }
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def kuberay_pods(rayjob: dict[str, Any]) -> list[dict[str, Any]]:
    """The head, one worker and the submitter pod of `rayjob`."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = [
        _ray_pod(cluster["headGroupSpec"]["template"], "head", worker=False),
        _ray_pod(cluster["workerGroupSpecs"][0]["template"], "worker", worker=True),
    ]
    submitter = copy.deepcopy(rayjob["spec"]["submitterPodTemplate"]["spec"])
    submitter["containers"][0]["env"] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "RAY_DASHBOARD_ADDRESS", "value": "head-svc:8265"},
        {"name": "RAY_JOB_SUBMISSION_ID", "value": "job-1"},
        *copy.deepcopy(TOKEN_ENV),
    ]
    submitter["containers"][0]["command"] = ["/bin/bash", "-ce", "--"]
    pods.append(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "submitter"}, "spec": submitter}
    )
    return pods
