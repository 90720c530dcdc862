"""Status you can trust, on the real API server: finished jobs stay finished, only our own
objects are touched, and every refusal of the API server reaches the job's status."""

from __future__ import annotations

import time

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune.controller.kube import Kube
from tests.controlplane.operator.helpers import (
    FTJ,
    FTJS,
    condition,
    create_job,
    events_for,
    job_manifest,
    rayjobs,
    status_of,
    wait_for,
    wait_phase,
)
from tests.support.kuberay_double import KubeRayDouble, Script
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.controlplane


@pytest.fixture(autouse=True)
def _operator(operator_process: OperatorProcess) -> OperatorProcess:
    return operator_process


def warnings(kube_api: client.ApiClient, namespace: str, name: str) -> list[client.CoreV1Event]:
    events = events_for(client.CoreV1Api(kube_api), namespace, name)
    return [e for e in events if e.type == "Warning"]


def test_foreign_object_with_a_childs_name_is_never_adopted_or_changed(
    custom: client.CustomObjectsApi,
    kube_api: client.ApiClient,
    namespace: str,
    kuberay: KubeRayDouble,
) -> None:
    reports = ("kubetune.dev", "v1alpha1", namespace, "finetunejobreports")
    foreign = custom.create_namespaced_custom_object(
        *reports,
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuneJobReport",
            "metadata": {"name": "squat-report"},
            "report": '{"phase": "Succeeded"}',
        },
    )
    create_job(custom, namespace, job_manifest("squat"))
    status = wait_phase(custom, namespace, "squat", "Failed")
    assert condition(status, "Failed")["reason"] == "NameConflict"
    assert f"FineTuneJobReport {namespace}/squat-report already exists" in status["message"]
    after = custom.get_namespaced_custom_object(*reports, "squat-report")
    assert after["metadata"]["resourceVersion"] == foreign["metadata"]["resourceVersion"]
    assert not after["metadata"].get("ownerReferences")
    posted = wait_for(lambda: warnings(kube_api, namespace, "squat"), what="the Warning event")
    assert [e.reason for e in posted] == ["NameConflict"]
    # the RayJob it had already created is its own: deleted, the GPUs freed
    wait_for(lambda: not rayjobs(custom, namespace), what="our RayJob deleted")


def test_quota_refusal_reaches_status_and_the_job_recovers(
    custom: client.CustomObjectsApi,
    kube_api: client.ApiClient,
    namespace: str,
    kuberay: KubeRayDouble,
) -> None:
    core = client.CoreV1Api(kube_api)
    hard = {"count/rayjobs.ray.io": "0"}
    core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "no-rayjobs"}, "spec": {"hard": hard}}
    )
    # The usage as kube-controller-manager's quota controller writes it (that controller
    # discovers custom resources only every few minutes): the real quota admission then
    # refuses the RayJob with its real message.
    core.patch_namespaced_resource_quota_status(
        "no-rayjobs", namespace, {"status": {"hard": hard, "used": {"count/rayjobs.ray.io": "0"}}}
    )
    create_job(custom, namespace, job_manifest("quota"))

    def refused() -> dict[str, str] | None:
        status = status_of(custom, namespace, "quota")
        return status if status.get("conditions") else None

    status = wait_for(refused, what="status with the refusal")
    assert status["phase"] == "Pending"
    running = condition(status, "Running")
    assert running["reason"] == "CreateFailed" and "exceeded quota" in running["message"]
    assert f"RayJob {namespace}/quota" in status["message"] and "rayJob" not in status
    posted = wait_for(lambda: warnings(kube_api, namespace, "quota"), what="the Warning event")
    assert [e.reason for e in posted] == ["CreateFailed"]
    time.sleep(3)  # retries back off and stay one at a time: still one warning
    assert len(warnings(kube_api, namespace, "quota")) == 1
    core.delete_namespaced_resource_quota("no-rayjobs", namespace)
    status = wait_phase(custom, namespace, "quota", "Succeeded", timeout=90)
    assert len(rayjobs(custom, namespace)) == 1


def test_rayjob_deleted_mid_run_ends_the_job_and_is_not_recreated(
    custom: client.CustomObjectsApi,
    kube_api: client.ApiClient,
    namespace: str,
    kuberay: KubeRayDouble,
) -> None:
    kuberay.script("vanish", Script(hold_at="Running"))
    create_job(custom, namespace, job_manifest("vanish"))
    wait_for(lambda: kuberay.is_held("vanish"), what="training")
    wait_phase(custom, namespace, "vanish", "Training")
    custom.delete_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", "vanish")
    status = wait_phase(custom, namespace, "vanish", "Failed")
    assert condition(status, "Failed")["reason"] == "RayJobDeleted"
    time.sleep(2)
    assert rayjobs(custom, namespace) == [], "the run was started again"


def test_trainer_reads_a_spec_of_any_size_through_the_api(
    custom: client.CustomObjectsApi,
    kube_api: client.ApiClient,
    namespace: str,
    kuberay: KubeRayDouble,
) -> None:
    """Templates of 2 x 16 KiB in each of 8 stages: far over the old command-line limit."""
    stage = {
        "task": {
            "preset": "custom",
            "promptTemplate": "{question}" + "p" * 16000,
            "completionTemplate": "{answer}" + "c" * 16000,
        },
        "data": {"train": {"uri": "s3://kubetune-datasets/gsm8k/train.jsonl"}},
    }
    doc = job_manifest("big")
    doc["spec"].pop("data")
    doc["spec"]["stages"] = [{"name": f"s{i}", **stage} for i in range(8)]
    doc["spec"]["evaluation"] = {"enabled": False}
    create_job(custom, namespace, doc)
    wait_for(lambda: kuberay.runs.get("big") and kuberay.runs["big"].job, what="trainer read")
    (rayjob,) = rayjobs(custom, namespace)
    assert len(rayjob["spec"]["entrypoint"]) < 1024
    read = kuberay.runs["big"].job
    assert read is not None and read["spec"]["stages"][7]["task"] == stage["task"]


def test_status_is_written_whole_and_only_onto_this_incarnation(
    custom: client.CustomObjectsApi,
    kube_api: client.ApiClient,
    namespace: str,
    kuberay: KubeRayDouble,
) -> None:
    """The operator's status write, against the real API server: a job deleted and created
    again under the same name refuses the old job's write; no key of an earlier status
    stays behind (a merge patch after a restart used to leave nested keys)."""
    kuberay.script("twice", Script(hold_at="Running"))
    create_job(custom, namespace, job_manifest("twice"))
    wait_for(lambda: kuberay.is_held("twice"), what="training")
    uid = custom.get_namespaced_custom_object(*FTJ, namespace, FTJS, "twice")["metadata"]["uid"]
    kube = Kube(kube_api)
    with pytest.raises(ApiException) as refused:
        kube.replace_status(namespace, "twice", "uid-of-an-earlier-twice", {"phase": "Failed"})
    assert refused.value.status == 422
    assert status_of(custom, namespace, "twice")["phase"] != "Failed"
    kube.replace_status(
        namespace, "twice", uid, {"phase": "Training", "progress": {"step": 1, "etaSeconds": 9}}
    )
    kube.replace_status(namespace, "twice", uid, {"phase": "Training", "progress": {"step": 2}})
    progress = status_of(custom, namespace, "twice")["progress"]  # schema defaults filled in
    assert progress["step"] == 2 and "etaSeconds" not in progress
    kuberay.release("twice")
