"""Every stuck or failed job says why, with real objects on the control plane.

No kubelet or scheduler runs here, so the tests write what they would: pods made from the
RayJob's pod template (as KubeRay makes them), their status as the scheduler and the kubelet
write it (tests/support/pod_states.py), and Warning events about them. The operator reads
them through its own watch and RBAC, and the job's reason and message must name the cause.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client

from tests.controlplane.operator.helpers import (
    condition,
    create_job,
    events_for,
    job_manifest,
    rayjobs,
    status_of,
    wait_for,
    wait_phase,
)
from tests.support import pod_states as k8s
from tests.support.kuberay_double import KubeRayDouble, Script

pytestmark = [pytest.mark.controlplane, pytest.mark.usefixtures("operator_process")]
RAY = ("ray.io", "v1", "rayjobs")


def make_pod(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    job: str,
    status: dict[str, Any],
    group: str = "worker",
) -> dict[str, Any]:
    """A pod from the RayJob's template (labels, service account, containers), as KubeRay
    makes it, with `status` written as the scheduler and the kubelet write it."""
    (rayjob,) = [r for r in rayjobs(custom, namespace) if r["metadata"]["name"].startswith(job)]
    spec = rayjob["spec"]["rayClusterSpec"]
    template = copy.deepcopy(
        spec["headGroupSpec"]["template"]
        if group == "head"
        else spec["workerGroupSpecs"][0]["template"]
    )
    name = f"{rayjob['metadata']['name']}-{group}-x7k2p"
    template["metadata"]["name"] = name
    pod = core.create_namespaced_pod(namespace, {"apiVersion": "v1", "kind": "Pod", **template})
    core.patch_namespaced_pod_status(name, namespace, {"status": status})
    return {"name": name, "uid": pod.metadata.uid}


def post_warning(
    core: client.CoreV1Api, namespace: str, pod: dict[str, Any], reason: str, message: str
) -> None:
    event = k8s.warning_event(pod["name"], pod["uid"], reason, message)
    event["involvedObject"].update(namespace=namespace, apiVersion="v1")
    core.create_namespaced_event(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{pod['name']}."},
            **event,
            "source": {"component": "kubelet"},
            "firstTimestamp": k8s.NOW,
            "lastTimestamp": k8s.NOW,
            "count": 1,
        },
    )


def failed_reason(status: dict[str, Any]) -> str:
    return str(condition(status, "Failed")["reason"])


def warnings_of(core: client.CoreV1Api, namespace: str, name: str) -> list[str]:
    return [e.reason for e in events_for(core, namespace, name) if e.type == "Warning"]


def test_pods_that_cannot_start_name_the_cause(
    custom: client.CustomObjectsApi,
    kube_api: client.ApiClient,
    namespace: str,
    kuberay: KubeRayDouble,
) -> None:
    """Unschedulable, an image pull that keeps failing and a missing volume end the job at
    the pre-running deadline with their own reason; an image that can never be pulled ends
    it at once (and the operator deletes the RayJob it no longer needs)."""
    core = client.CoreV1Api(kube_api)
    jobs = {"unsched": 4, "backoff": 4, "mount": 4, "nopull": 600}
    for name, deadline in jobs.items():
        kuberay.script(name, Script(outcome="never-starts"))
        create_job(
            custom, namespace, job_manifest(name, runPolicy={"preRunningDeadlineSeconds": deadline})
        )
    for name in jobs:
        wait_phase(custom, namespace, name, "Provisioning")
    make_pod(core, custom, namespace, "unsched", k8s.unschedulable(), group="head")
    make_pod(core, custom, namespace, "backoff", k8s.image_pull_backoff())
    mount = make_pod(core, custom, namespace, "mount", k8s.container_creating())
    post_warning(core, namespace, mount, "FailedMount", k8s.MOUNT_MESSAGE)
    make_pod(core, custom, namespace, "nopull", k8s.image_never_pull())

    # While the cluster waits, the Running condition names the cause, with a Warning event.
    starting = wait_for(
        lambda: (
            (s := status_of(custom, namespace, "unsched")).get("phase") == "Provisioning"
            and condition(s, "Running")["reason"] == "Unschedulable"
            and s
        ),
        what="Provisioning, reason Unschedulable",
    )
    assert "didn't match Pod's node affinity/selector" in starting["message"]
    wait_for(lambda: "Unschedulable" in warnings_of(core, namespace, "unsched"), what="event")

    expected = {
        "unsched": ("Unschedulable", "0/3 nodes are available"),
        "backoff": ("ImagePullFailed", "trainer:typo"),
        "mount": ("PodConfigError", 'persistentvolumeclaim "ckpt" not found'),
        "nopull": ("ImagePullFailed", "pull policy of Never"),
    }
    for name, (reason, words) in expected.items():
        status = wait_phase(custom, namespace, name, "Failed", timeout=60)
        assert failed_reason(status) == reason, status["message"]
        assert words in status["message"]
        assert "Next: " in status["message"]
    nopull = status_of(custom, namespace, "nopull")
    assert "cannot start" in nopull["message"] and "pre-running" not in nopull["message"]
    wait_for(
        lambda: (
            not [
                r for r in rayjobs(custom, namespace) if r["metadata"]["name"].startswith("nopull")
            ]
        ),
        what="the RayJob of a job that can never start deleted",
    )


@pytest.mark.parametrize(
    ("script", "pod_status", "reason", "words"),
    [
        (
            Script(outcome="worker-dies", hold_at="Running"),
            k8s.oom_killed(),
            "OOMKilled",
            "exit code 137",
        ),
        (
            Script(outcome="worker-dies", hold_at="Running"),
            k8s.preempted(),
            "Preempted",
            "DeletionByTaintManager",
        ),
        (
            Script(outcome="worker-dies", hold_at="Running"),
            k8s.evicted(),
            "Evicted",
            "kubetune-scratch",
        ),
        (
            Script(
                outcome="trainer-fails",
                error="DataError: ValueError: train.jsonl: malformed JSON at line 3",
                error_reason="DataError",
                hold_at="Running",
            ),
            None,
            "DataError",
            "malformed JSON at line 3",
        ),
        (
            Script(
                outcome="trainer-fails",
                error="DistBackendError: [Rank 3] Watchdog caught collective operation timeout",
                hold_at="Running",
            ),
            None,
            "CollectiveTimeout",
            "Watchdog caught collective operation timeout",
        ),
    ],
    ids=["oom-killed", "preempted", "evicted", "data", "collective"],
)
def test_a_failed_run_names_its_cause(
    custom: client.CustomObjectsApi,
    kube_api: client.ApiClient,
    namespace: str,
    kuberay: KubeRayDouble,
    script: Script,
    pod_status: dict[str, Any] | None,
    reason: str,
    words: str,
) -> None:
    core = client.CoreV1Api(kube_api)
    kuberay.script("lost", script)
    create_job(custom, namespace, job_manifest("lost"))
    wait_for(lambda: kuberay.is_held("lost"), what="training")
    if pod_status is not None:
        make_pod(core, custom, namespace, "lost", pod_status)
    kuberay.release("lost")
    status = wait_phase(custom, namespace, "lost", "Failed")
    assert failed_reason(status) == reason, status["message"]
    assert words in status["message"] and "Next: " in status["message"]
    wait_for(lambda: warnings_of(core, namespace, "lost") == [reason], what="one Warning event")


def test_a_trainer_without_progress_is_stalled_until_it_moves(
    custom: client.CustomObjectsApi,
    kube_api: client.ApiClient,
    namespace: str,
    kuberay: KubeRayDouble,
) -> None:
    """The report's heartbeat stops moving: condition Stalled and a Warning event, cleared by
    progress; with failOnStall the job fails, reason Stalled, and its RayJob is deleted."""
    core = client.CoreV1Api(kube_api)
    kuberay.script("slow", Script(hold_at="Epoch"))
    kuberay.script("hung", Script(hold_at="Epoch"))
    create_job(custom, namespace, job_manifest("slow", runPolicy={"stallTimeoutSeconds": 2}))
    create_job(
        custom,
        namespace,
        job_manifest("hung", runPolicy={"stallTimeoutSeconds": 2, "failOnStall": True}),
    )
    stalled = wait_for(
        lambda: (
            (s := status_of(custom, namespace, "slow")).get("conditions")
            and condition(s, "Stalled")["status"] == "True"
            and s
        ),
        timeout=30,
        what="Stalled",
    )
    assert stalled["phase"] == "Training"
    assert "optimizer step 10/30" in condition(stalled, "Stalled")["message"]
    wait_for(lambda: "Stalled" in warnings_of(core, namespace, "slow"), what="Stalled event")
    hung = wait_phase(custom, namespace, "hung", "Failed", timeout=30)
    assert failed_reason(hung) == "Stalled" and "no trainer progress" in hung["message"]
    assert condition(hung, "Stalled")["status"] == "True"
    wait_for(lambda: warnings_of(core, namespace, "hung") == ["Stalled"], what="one Warning event")
    wait_for(
        lambda: (
            not [r for r in rayjobs(custom, namespace) if r["metadata"]["name"].startswith("hung")]
        ),
        what="the stalled run's RayJob deleted",
    )
    kuberay.pulse("slow")  # progress while still training: the condition clears
    moving = wait_for(
        lambda: (
            condition(s := status_of(custom, namespace, "slow"), "Stalled")["status"] == "False"
            and s
        ),
        what="Stalled cleared by progress",
    )
    assert moving["phase"] == "Training"
    kuberay.release("slow")
    wait_phase(custom, namespace, "slow", "Succeeded")


def test_pod_facts_reach_the_operator_through_its_watch(
    custom: client.CustomObjectsApi,
    kube_api: client.ApiClient,
    namespace: str,
    kuberay: KubeRayDouble,
) -> None:
    """No deadline, no failure: a pod that becomes unschedulable is reported while the
    cluster starts, and a pod that is scheduled later clears it (watch events, not polls)."""
    core = client.CoreV1Api(kube_api)
    kuberay.script("waits", Script(outcome="never-starts"))
    create_job(
        custom, namespace, job_manifest("waits", runPolicy={"preRunningDeadlineSeconds": 600})
    )
    wait_phase(custom, namespace, "waits", "Provisioning")
    pod = make_pod(core, custom, namespace, "waits", k8s.unschedulable())
    wait_for(
        lambda: (
            condition(status_of(custom, namespace, "waits"), "Running")["reason"] == "Unschedulable"
        ),
        what="Unschedulable",
    )
    core.patch_namespaced_pod_status(
        pod["name"],
        namespace,
        {
            "status": {
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": k8s.NOW}
                ]
            }
        },
    )
    wait_for(
        lambda: (
            condition(status_of(custom, namespace, "waits"), "Running")["reason"]
            == "ClusterStarting"
        ),
        what="the cause cleared",
    )
    assert status_of(custom, namespace, "waits")["phase"] == "Provisioning"
