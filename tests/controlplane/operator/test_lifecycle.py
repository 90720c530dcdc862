"""The operator, running for real, drives FineTuneJobs through KubeRay (played by the double)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.controlplane.operator.helpers import (
    FTJ,
    FTJS,
    condition,
    create_job,
    events_for,
    get_job,
    job_manifest,
    rayjobs,
    status_of,
    wait_for,
    wait_phase,
)
from tests.support.controlplane import Kubectl
from tests.support.kuberay_double import KubeRayDouble, Script
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.controlplane


@pytest.fixture(autouse=True)
def _operator(operator_process: OperatorProcess) -> OperatorProcess:
    return operator_process


def test_happy_path_to_succeeded(
    custom: client.CustomObjectsApi,
    kube_api: client.ApiClient,
    namespace: str,
    kuberay: KubeRayDouble,
    kubectl: Kubectl,
) -> None:
    create_job(custom, namespace, job_manifest("happy"))
    status = wait_phase(custom, namespace, "happy", "Succeeded")
    assert [e["epoch"] for e in status["epochs"]] == [1, 2, 3]
    uid = get_job(custom, namespace, "happy")["metadata"]["uid"]
    own = f"s3://kubetune-checkpoints/llama2-7b-gsm8k/{uid}"  # the job's own folder
    assert status["outputURI"] == own and status["bestCheckpoint"]["uri"] == f"{own}/epoch-3"
    assert status["evaluation"]["score"] == 0.47
    assert status["rayJob"]["jobStatus"] == "SUCCEEDED" and status["rayJob"]["attempts"] == 1
    assert status["rayJob"]["dashboardURL"].endswith(":8265")
    assert status["completionTime"] and status["startTime"]
    assert condition(status, "Succeeded")["status"] == "True"
    assert not kuberay.errors, kuberay.errors
    table = kubectl("get", "ftj", "happy", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:6] == ["NAME", "PHASE", "MODEL", "TASK", "EPOCH", "BEST-PPL"]
    assert row.split()[1:7] == [
        "Succeeded",
        "meta-llama/Llama-2-7b-hf",
        "gsm8k",
        "3",
        "2.3333",
        "0.47",
    ]
    described = kubectl("describe", "ftj", "happy", "-n", namespace).stdout
    for phase in ("Training", "Evaluating", "Succeeded"):  # Pending may be skipped: fast double
        assert phase in described.split("Events:")[1]
    reasons = [e.reason for e in events_for(client.CoreV1Api(kube_api), namespace, "happy")]
    assert len(reasons) == len(set(reasons)), "one event per phase change"


def test_one_rayjob_with_owned_children(
    custom: client.CustomObjectsApi, kube_api: client.ApiClient, namespace: str
) -> None:
    create_job(custom, namespace, job_manifest("owned"))
    (rayjob,) = wait_for(lambda: rayjobs(custom, namespace), what="RayJob")
    owner = rayjob["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("FineTuneJob", "owned", True)
    assert rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2
    job = custom.get_namespaced_custom_object(*FTJ, namespace, FTJS, "owned")
    # level-triggered: nothing but .status is written onto the job (no kopf progress,
    # no diffbase, no finalizer); deletion is left to the garbage collector
    assert not job["metadata"].get("annotations") and not job["metadata"].get("finalizers")
    # The RayJob is created first (the cluster starts sooner); the report channel follows.
    report = wait_for(
        lambda: custom.get_namespaced_custom_object(
            *FTJ, namespace, "finetunejobreports", "owned-report"
        ),
        what="FineTuneJobReport",
    )
    assert report["metadata"]["ownerReferences"][0]["name"] == "owned"


@pytest.mark.parametrize(
    ("script", "reason", "words"),
    [
        (Script(outcome="trainer-fails"), "OOMKilled", "CUDA out of memory"),
        (Script(outcome="deadline"), "DeadlineExceeded", "activeDeadlineSeconds"),
        (Script(outcome="submission-fails"), "SubmissionFailed", "dashboard"),
        (Script(outcome="no-checkpoint"), "IncompleteResults", "no best checkpoint"),
        (Script(outcome="diverges"), "Diverged", "validation_perplexity=inf"),
    ],
    ids=["trainer", "deadline", "submission", "no-checkpoint", "diverges"],
)
def test_failures_are_explained(
    custom: client.CustomObjectsApi,
    kube_api: client.ApiClient,
    namespace: str,
    kuberay: KubeRayDouble,
    script: Script,
    reason: str,
    words: str,
) -> None:
    doc = job_manifest("broken", runPolicy={"activeDeadlineSeconds": 3600})
    kuberay.script("broken", script)
    create_job(custom, namespace, doc)
    status = wait_phase(custom, namespace, "broken", "Failed")
    failed = condition(status, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", reason)
    assert words in status["message"]
    assert condition(status, "Running")["status"] == "False"
    # The event follows the status write: wait for it, then check there is just the one.
    warnings = wait_for(
        lambda: [
            e
            for e in events_for(client.CoreV1Api(kube_api), namespace, "broken")
            if e.type == "Warning"
        ],
        what="the Warning event",
    )
    assert [e.reason for e in warnings] == [reason]
    if reason == "Diverged":  # KubeRay still ran it: the operator stops the run itself
        wait_for(lambda: not rayjobs(custom, namespace), what="the RayJob deleted")
        assert [e["epoch"] for e in status["epochs"]] == [1], "only finite points in status"


def test_a_job_whose_pods_never_start_fails_at_the_pre_running_deadline(
    custom: client.CustomObjectsApi, namespace: str, kuberay: KubeRayDouble
) -> None:
    kuberay.script("stuck", Script(outcome="never-starts"))
    create_job(custom, namespace, job_manifest("stuck", runPolicy={"preRunningDeadlineSeconds": 3}))
    wait_phase(custom, namespace, "stuck", "Provisioning")
    [rayjob] = rayjobs(custom, namespace)
    assert rayjob["spec"]["preRunningDeadlineSeconds"] == 3
    status = wait_phase(custom, namespace, "stuck", "Failed")
    failed = condition(status, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "DeadlineExceeded")
    assert "never started running within the pre-running deadline" in status["message"]
    assert "kubectl describe" in status["message"]  # the remedy for this cause, not a longer run
    assert "activeDeadlineSeconds" not in status["message"].split("Next:")[1]


def test_retries_are_not_failures(
    custom: client.CustomObjectsApi, namespace: str, kuberay: KubeRayDouble
) -> None:
    kuberay.script("retry", Script(fail_attempts=1))
    create_job(custom, namespace, job_manifest("retry", runPolicy={"backoffLimit": 1}))
    seen: list[str] = []

    def done() -> dict[str, Any] | None:
        status = status_of(custom, namespace, "retry")
        seen.append(condition(status, "Running")["reason"] if status.get("conditions") else "")
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_for(done, 40, interval=0.05, what="retry outcome")
    assert status["phase"] == "Succeeded", status["message"]
    assert status["rayJob"]["attempts"] == 2


def test_suspend_and_resume_with_run_policy(
    custom: client.CustomObjectsApi, namespace: str, kuberay: KubeRayDouble
) -> None:
    kuberay.script("pause", Script(hold_at="Running"))
    create_job(custom, namespace, job_manifest("pause", runPolicy={"suspend": True}))
    wait_phase(custom, namespace, "pause", "Suspended")
    (rayjob,) = rayjobs(custom, namespace)
    assert rayjob["spec"]["suspend"] is True
    patch_suspend(custom, namespace, "pause", False)
    wait_for(lambda: kuberay.is_held("pause"), what="training")
    patch_suspend(custom, namespace, "pause", True)
    status = wait_phase(custom, namespace, "pause", "Suspended")
    assert condition(status, "Suspended")["status"] == "True"
    kuberay.release("pause")
    patch_suspend(custom, namespace, "pause", False)
    try:
        wait_phase(custom, namespace, "pause", "Succeeded")
    except AssertionError:
        (rayjob,) = rayjobs(custom, namespace)
        raise AssertionError(
            (
                rayjob["spec"]["suspend"],
                rayjob.get("status"),
                status_of(custom, namespace, "pause"),
                kuberay.errors,
            )
        ) from None


def test_invalid_semantic_spec_creates_nothing(
    custom: client.CustomObjectsApi,
    kube_api: client.ApiClient,
    namespace: str,
    kuberay: KubeRayDouble,
) -> None:
    doc = job_manifest("invalid", compute={"workers": 12})  # 12 of 8 GPUs per node
    create_job(custom, namespace, doc)
    status = wait_phase(custom, namespace, "invalid", "Failed")
    accepted = condition(status, "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "InvalidSpec")
    assert "spec.compute.workers" in accepted["message"]
    events = events_for(client.CoreV1Api(kube_api), namespace, "invalid")
    assert [(e.type, e.reason) for e in events] == [("Warning", "InvalidSpec")]
    assert rayjobs(custom, namespace) == []
    cms = client.CoreV1Api(kube_api).list_namespaced_config_map(namespace).items
    assert not [c for c in cms if c.metadata.name.startswith("invalid")]


def test_a_job_that_will_not_fit_fails_before_any_pod_with_its_plan(
    custom: client.CustomObjectsApi,
    kube_api: client.ApiClient,
    namespace: str,
    kuberay: KubeRayDouble,
) -> None:
    """70B on 16 A10G: host memory per node is the binding constraint; nothing is created."""
    doc = job_manifest(
        "toobig",
        model={"name": "meta-llama/Llama-2-70b-hf"},
        training={"deepspeed": {"stage": 3, "offloadOptimizer": True, "offloadParameters": True}},
    )
    create_job(custom, namespace, doc)
    status = wait_phase(custom, namespace, "toobig", "Failed")
    accepted = condition(status, "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "WillNotFit")
    assert "host memory per node" in accepted["message"]
    assert "remedy: set compute.workers: 32" in accepted["message"]
    plan = status["plan"]
    assert plan["verdict"] == "WillNotFit" and plan["nodes"] == 2 and plan["gpus"] == 16
    assert [p["name"] for p in plan["phases"]] == ["training", "checkpoint", "evaluation"]
    events = events_for(client.CoreV1Api(kube_api), namespace, "toobig")
    assert [(e.type, e.reason) for e in events] == [("Warning", "WillNotFit")]
    assert rayjobs(custom, namespace) == []

    # The same job with the override is accepted (and keeps its plan).
    doc = job_manifest("forced", **{**doc["spec"], "runPolicy": {"skipFitCheck": True}})
    create_job(custom, namespace, doc)
    wait_for(lambda: rayjobs(custom, namespace), what="the forced job's RayJob")
    plan = wait_for(lambda: status_of(custom, namespace, "forced").get("plan"), what="its plan")
    assert plan["verdict"] == "WillNotFit"


def test_an_accepted_job_records_its_plan(custom: client.CustomObjectsApi, namespace: str) -> None:
    create_job(custom, namespace, job_manifest("planned"))
    plan = wait_for(lambda: status_of(custom, namespace, "planned").get("plan"), what="the plan")
    assert plan["verdict"] == "Fits" and plan["message"].startswith("binding: ")
    assert {p["name"] for p in plan["phases"]} == {"training", "checkpoint", "evaluation"}


def test_local_storage_is_invalid_on_kubernetes(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    create_job(custom, namespace, job_manifest("local", output={"storageURI": "/tmp/out"}))
    status = wait_phase(custom, namespace, "local", "Failed")
    assert "spec.output.storageURI" in status["message"]
    assert rayjobs(custom, namespace) == []


def test_deletion_cleans_up(
    custom: client.CustomObjectsApi, kube_api: client.ApiClient, namespace: str
) -> None:
    create_job(custom, namespace, job_manifest("gone"))
    wait_for(lambda: rayjobs(custom, namespace), what="RayJob")
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    wait_for(lambda: rbac.read_namespaced_role_binding("gone-trainer", namespace), what="binding")
    custom.delete_namespaced_custom_object(*FTJ, namespace, FTJS, "gone")

    def all_gone() -> bool:
        left = [
            rayjobs(custom, namespace),
            [
                c
                for c in core.list_namespaced_config_map(namespace).items
                if c.metadata.name == "gone-report"
            ],
            [
                s
                for s in core.list_namespaced_service_account(namespace).items
                if s.metadata.name == "gone-trainer"
            ],
            rbac.list_namespaced_role(namespace).items,
            rbac.list_namespaced_role_binding(namespace).items,
        ]
        return not any(left)

    wait_for(all_gone, 40, what="garbage collection of owned objects")


def test_metrics_are_served(
    operator_process: OperatorProcess,
    custom: client.CustomObjectsApi,
    namespace: str,
    kuberay: KubeRayDouble,
) -> None:
    create_job(custom, namespace, job_manifest("measured"))
    wait_phase(custom, namespace, "measured", "Succeeded")
    text = operator_process.metrics()
    assert 'kubetune_finetunejobs{phase="Succeeded"}' in text
    assert "kubetune_reconcile_duration_seconds_bucket" in text
    assert "kubetune_reconcile_errors_total" in text


def patch_suspend(
    custom: client.CustomObjectsApi, namespace: str, name: str, suspend: bool
) -> None:
    custom.patch_namespaced_custom_object(
        *FTJ, namespace, FTJS, name, {"spec": {"runPolicy": {"suspend": suspend}}}
    )
