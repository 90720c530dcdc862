"""Pod statuses and events as the scheduler and the kubelet write them, for the failure
reasons kubetune classifies (kubetune.diagnosis). The words are Kubernetes' own (v1.34:
scheduler `FailedScheduling`, kubelet image and config errors, `OOMKilled`, eviction,
`DisruptionTarget` reasons), so a test that matches them matches a real cluster.

Unit tests read the dicts; control-plane tests write them onto real pods and events.
"""

from __future__ import annotations

from typing import Any

NOW = "2026-12-06T10:00:00Z"


def _condition(type_: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    condition = {"type": type_, "status": status, "lastTransitionTime": NOW}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _waiting(container: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "name": container,
        "ready": False,
        "restartCount": 0,
        "image": "ghcr.io/kubetune/trainer:0.1.0",
        "imageID": "",
        "state": {"waiting": {"reason": reason, "message": message}},
    }


UNSCHEDULABLE_MESSAGE = (
    "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/"
    "control-plane: }, 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 "
    "nodes are available: 3 Preemption is not helpful for scheduling."
)
PULL_MESSAGE = (
    'Failed to pull image "ghcr.io/kubetune/trainer:typo": rpc error: code = NotFound desc = '
    "failed to pull and unpack image: not found"
)
NEVER_PULL_MESSAGE = 'Container image "kubetune/absent:1" is not present with pull policy of Never'
SECRET_MESSAGE = 'secret "hf-token" not found'
MOUNT_MESSAGE = (
    'MountVolume.SetUp failed for volume "checkpoints" : persistentvolumeclaim "ckpt" not found'
)
EVICTED_MESSAGE = 'Usage of EmptyDir volume "kubetune-scratch" exceeds the limit "167Gi". '


def unschedulable() -> dict[str, Any]:
    """The scheduler's verdict on a pod no node fits."""
    return {
        "phase": "Pending",
        "conditions": [_condition("PodScheduled", "False", "Unschedulable", UNSCHEDULABLE_MESSAGE)],
    }


def image_pull_backoff(container: str = "ray-worker") -> dict[str, Any]:
    return {
        "phase": "Pending",
        "conditions": [_condition("PodScheduled", "True")],
        "containerStatuses": [
            _waiting(container, "ImagePullBackOff", f"Back-off pulling image: {PULL_MESSAGE}")
        ],
    }


def image_never_pull(container: str = "ray-worker") -> dict[str, Any]:
    return {
        "phase": "Pending",
        "conditions": [_condition("PodScheduled", "True")],
        "containerStatuses": [_waiting(container, "ErrImageNeverPull", NEVER_PULL_MESSAGE)],
    }


def config_error(container: str = "ray-worker") -> dict[str, Any]:
    return {
        "phase": "Pending",
        "conditions": [_condition("PodScheduled", "True")],
        "containerStatuses": [_waiting(container, "CreateContainerConfigError", SECRET_MESSAGE)],
    }


def container_creating(container: str = "ray-worker") -> dict[str, Any]:
    """Scheduled, a volume not mountable: the pod's status says only ContainerCreating."""
    return {
        "phase": "Pending",
        "conditions": [_condition("PodScheduled", "True")],
        "containerStatuses": [_waiting(container, "ContainerCreating", "")],
    }


def oom_killed(container: str = "ray-worker") -> dict[str, Any]:
    """A worker container killed by the kernel's OOM killer and restarted in place."""
    return {
        "phase": "Running",
        "conditions": [_condition("PodScheduled", "True"), _condition("Ready", "True")],
        "containerStatuses": [
            {
                "name": container,
                "ready": True,
                "restartCount": 1,
                "image": "ghcr.io/kubetune/trainer:0.1.0",
                "imageID": "",
                "state": {"running": {"startedAt": NOW}},
                "lastState": {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "OOMKilled",
                        "startedAt": NOW,
                        "finishedAt": NOW,
                    }
                },
            }
        ],
    }


def evicted() -> dict[str, Any]:
    return {"phase": "Failed", "reason": "Evicted", "message": EVICTED_MESSAGE}


def preempted() -> dict[str, Any]:
    """Deleted by the taint manager after its node went NotReady (node loss)."""
    return {
        "phase": "Running",
        "conditions": [
            _condition(
                "DisruptionTarget",
                "True",
                "DeletionByTaintManager",
                "Taint manager: deleting due to NoExecute taint",
            )
        ],
    }


def warning_event(pod_name: str, pod_uid: str, reason: str, message: str) -> dict[str, Any]:
    """A core/v1 Warning Event about a pod, as the kubelet or the scheduler posts it."""
    return {
        "type": "Warning",
        "reason": reason,
        "message": message,
        "involvedObject": {"kind": "Pod", "name": pod_name, "uid": pod_uid},
    }


def pod(name: str, uid: str, status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid}, "status": status}
