"""build_rayjob: layout, sizing, scheduling, secrets, policy and ownership of the RayJob."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from kubetune.api.pods import (
    HF_HUB_CACHE_ENV,
    PVC_ROOT,
    PVC_ROOT_ENV,
    SCRATCH_DIR,
    SCRATCH_ENV,
    SCRATCH_VOLUME,
)
from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.builders.naming import RAYJOB_NAME_LIMIT, is_dns1035_label
from kubetune.builders.rayjob import (
    CPU_WORKER_GROUP,
    CPU_WORKER_START_PARAMS,
    GPU_RESOURCE,
    GPU_TOLERATION,
    INSTANCE_TYPE_LABEL,
    QUEUE_LABEL,
    WORKER_GROUP,
    build_rayjob,
    kuberay_too_old,
    worker_layout,
)
from kubetune.builders.render import owned_objects
from kubetune.config import OperatorConfig
from kubetune.planning import build_plan, plan_summary, scratch_gib, shape_of
from kubetune.planning.memory import GIB
from kubetune_trainer.entrypoint import build_parser as trainer_parser
from tests.unit.builders.helpers import FAKE_UID, NAMESPACE, example_doc, example_job

pytestmark = pytest.mark.unit

CONFIG = OperatorConfig()


def workers_of(rayjob: dict[str, Any]) -> dict[str, Any]:
    groups = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert len(groups) == 1
    return groups[0]


def container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("example", "pods", "gpus"),
    [
        ("gsm8k-llama2-7b", 2, 8),
        ("gsm8k-llama2-13b", 2, 8),
        ("gsm8k-llama2-70b", 4, 8),
        ("viggo-llama2-13b-p4d", 1, 8),
        ("sql-llama2-7b-lora-1gpu", 1, 1),
    ],
)
def test_worker_group_has_whole_nodes_fixed_size(example: str, pods: int, gpus: int) -> None:
    group = workers_of(build_rayjob(example_job(example), CONFIG))
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == pods
    assert container(group)["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)


def test_autoscaling_off_and_head_gets_no_training() -> None:
    spec = build_rayjob(example_job("gsm8k-llama2-13b"), CONFIG)["spec"]["rayClusterSpec"]
    assert spec["enableInTreeAutoscaling"] is False
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    head = container(spec["headGroupSpec"])
    assert "nvidia.com/gpu" not in head["resources"]["limits"]


def test_g5_48xlarge_pod_fits_allocatable_with_headroom() -> None:
    res = container(workers_of(build_rayjob(example_job("gsm8k-llama2-13b"), CONFIG)))["resources"]
    assert res["requests"] == {"cpu": "172", "memory": "691Gi"}
    assert res["limits"]["cpu"] == "172" and res["limits"]["memory"] == "691Gi"


def test_partial_node_gets_its_share() -> None:
    doc = example_doc("gsm8k-llama2-13b")
    doc["spec"]["compute"]["workers"] = 2
    assert worker_layout(FineTuneJob.model_validate(doc).spec) == (1, 2)
    res = container(workers_of(build_rayjob(FineTuneJob.model_validate(doc), CONFIG)))["resources"]
    assert res["requests"] == {"cpu": "43", "memory": "172Gi"}


def test_headroom_is_configurable() -> None:
    config = OperatorConfig(cpu_headroom=0.0, memory_headroom=0.25)
    res = container(workers_of(build_rayjob(example_job("gsm8k-llama2-13b"), config)))["resources"]
    assert res["requests"] == {"cpu": "192", "memory": "576Gi"}


def test_unknown_instance_type_gets_gpu_limits_only() -> None:
    doc = example_doc("gsm8k-llama2-13b")
    doc["spec"]["compute"]["nodePool"] = {"instanceType": "a3-highgpu-8g", "gpusPerNode": 8}
    res = container(workers_of(build_rayjob(FineTuneJob.model_validate(doc), CONFIG)))["resources"]
    assert res == {"limits": {"nvidia.com/gpu": "8"}}


def test_node_selector_and_tolerations() -> None:
    group = workers_of(build_rayjob(example_job("viggo-llama2-13b-p4d"), CONFIG))
    pod = group["template"]["spec"]
    assert pod["nodeSelector"] == {
        "node.kubernetes.io/instance-type": "p4d.24xlarge",
        "kubetune.dev/pool": "a100",
    }
    assert pod["tolerations"] == [GPU_TOLERATION]  # the user's identical one is not doubled
    seventy = workers_of(build_rayjob(example_job("gsm8k-llama2-70b"), CONFIG))
    keys = [t["key"] for t in seventy["template"]["spec"]["tolerations"]]
    assert keys == ["dedicated", "nvidia.com/gpu"]


def test_entrypoint_names_the_job_and_the_trainer_parser_reads_it() -> None:
    job = example_job("gsm8k-llama2-13b")
    argv = shlex.split(build_rayjob(job, CONFIG)["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "kubetune_trainer.entrypoint"]
    args = trainer_parser().parse_args(argv[3:])
    assert args.spec_json is None, "the trainer reads the spec through the API"
    assert (args.job_name, args.namespace, args.job_uid) == (
        "llama2-13b-gsm8k",
        NAMESPACE,
        FAKE_UID,
    )
    assert args.report == "finetunejobreport:llama2-13b-gsm8k-report"


def test_entrypoint_stays_short_for_the_largest_valid_spec() -> None:
    """Before: the spec rode on the command line, and long templates passed Linux's 128 KiB
    argument limit (ray job submit then failed with a misleading hint)."""
    doc = example_doc("gsm8k-llama2-13b")
    doc["metadata"]["name"] = "n" * 253
    doc["spec"]["task"] = {
        "preset": "custom",
        "promptTemplate": "{question}" + "p" * 16000,
        "completionTemplate": "{answer}" + "r" * 16000,
    }
    job = FineTuneJob.model_validate(doc)
    entrypoint = build_rayjob(job, CONFIG)["spec"]["entrypoint"]
    assert len(entrypoint.encode()) < 1024


def test_every_job_has_a_pre_running_deadline_unless_disabled() -> None:
    job = example_job("gsm8k-llama2-7b")
    assert build_rayjob(job, CONFIG)["spec"]["preRunningDeadlineSeconds"] == 1800
    doc = example_doc("gsm8k-llama2-7b")
    doc["spec"].setdefault("runPolicy", {})["preRunningDeadlineSeconds"] = 600
    spec = build_rayjob(FineTuneJob.model_validate(doc), CONFIG)["spec"]
    assert spec["preRunningDeadlineSeconds"] == 600
    disabled = OperatorConfig(pre_running_deadline_seconds=None)
    assert "preRunningDeadlineSeconds" not in build_rayjob(job, disabled)["spec"]
    # An older KubeRay refuses the field by name (strict field validation) instead of a
    # job that silently waits forever.
    assert "1.6.0" in (
        kuberay_too_old(
            '.spec.preRunningDeadlineSeconds: unknown field "spec.preRunningDeadlineSeconds"'
        )
        or ""
    )


def test_lifecycle_fields() -> None:
    spec = build_rayjob(example_job("gsm8k-llama2-70b"), CONFIG)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["submissionMode"] == "K8sJobMode"
    assert (
        spec["activeDeadlineSeconds"],
        spec["backoffLimit"],
        spec["ttlSecondsAfterFinished"],
    ) == (172800, 2, 3600)
    defaults = build_rayjob(
        example_job("gsm8k-llama2-7b"),
        OperatorConfig(active_deadline_seconds=86400, ttl_seconds_after_finished=60),
    )["spec"]
    assert (
        defaults["activeDeadlineSeconds"],
        defaults["backoffLimit"],
        defaults["ttlSecondsAfterFinished"],
    ) == (86400, 0, 60)
    assert (
        "activeDeadlineSeconds" not in build_rayjob(example_job("gsm8k-llama2-7b"), CONFIG)["spec"]
    )


def test_secrets_only_by_reference() -> None:
    rayjob = build_rayjob(example_job("gsm8k-llama2-13b"), CONFIG)
    for group in (rayjob["spec"]["rayClusterSpec"]["headGroupSpec"], workers_of(rayjob)):
        c = container(group)
        token = next(e for e in c["env"] if e["name"] == "HF_TOKEN")
        assert token == {
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
        }
        assert c["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
        # The only plain values are the pods' mount points (kubetune.api.pods).
        plain = {e["name"]: e["value"] for e in c["env"] if "value" in e}
        assert set(plain) <= {PVC_ROOT_ENV, SCRATCH_ENV, HF_HUB_CACHE_ENV}
        assert all(v.startswith((PVC_ROOT, SCRATCH_DIR)) for v in plain.values())


def test_pvc_uris_are_mounted() -> None:
    rayjob = build_rayjob(example_job("sql-llama2-7b-lora-1gpu"), CONFIG)
    pod = workers_of(rayjob)["template"]["spec"]
    claims = sorted(
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if v["name"] != "kubetune-scratch"
    )
    assert claims == ["checkpoints", "datasets"]
    assert {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]} == {
        "/mnt/pvc/checkpoints",
        "/mnt/pvc/datasets",
        SCRATCH_DIR,
    }


@pytest.mark.parametrize("example", ["viggo-llama2-13b", "gsm8k-llama2-70b"])
def test_worker_pods_stage_on_node_local_scratch_sized_by_the_plan(example: str) -> None:
    job = example_job(example)
    plan = build_plan(job.spec, shape_of(job.spec.model.name), CONFIG)
    assert plan is not None
    need = max(p.disk.total for p in plan.phases)
    size = scratch_gib(plan)
    assert size is not None and need * 1.25 <= size * GIB < need * 1.25 + GIB
    rayjob = next(o for o in owned_objects(job, CONFIG) if o["kind"] == "RayJob")
    pod = workers_of(rayjob)["template"]["spec"]
    assert {"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": f"{size}Gi"}} in pod["volumes"]
    worker = pod["containers"][0]
    assert worker["resources"]["requests"]["ephemeral-storage"] == f"{size}Gi"
    assert "ephemeral-storage" not in worker["resources"]["limits"]  # sizeLimit bounds it
    assert {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_DIR} in worker["volumeMounts"]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env[SCRATCH_ENV] == SCRATCH_DIR and env[HF_HUB_CACHE_ENV].startswith(SCRATCH_DIR + "/")
    head = container(rayjob["spec"]["rayClusterSpec"]["headGroupSpec"])
    assert SCRATCH_ENV not in {e["name"] for e in head["env"]}  # the driver stages nothing big
    assert plan_summary(plan).scratch_gib == size  # what .status.plan shows


def test_a_model_the_planner_cannot_size_gets_scratch_without_a_limit() -> None:
    doc = example_doc("gsm8k-llama2-7b")
    doc["spec"]["model"]["name"] = "example-org/unknown-model"
    job = FineTuneJob.model_validate(doc)
    rayjob = next(o for o in owned_objects(job, CONFIG) if o["kind"] == "RayJob")
    pod = workers_of(rayjob)["template"]["spec"]
    assert {"name": SCRATCH_VOLUME, "emptyDir": {}} in pod["volumes"]
    assert "ephemeral-storage" not in pod["containers"][0]["resources"]["requests"]


def test_metadata_labels_and_owner() -> None:
    meta = build_rayjob(example_job("gsm8k-llama2-13b"), CONFIG)["metadata"]
    assert meta["namespace"] == NAMESPACE
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubetune-operator"
    assert meta["labels"]["kubetune.dev/finetunejob"] == "llama2-13b-gsm8k"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "name": "llama2-13b-gsm8k",
            "uid": FAKE_UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_long_names_stay_valid_and_distinct() -> None:
    names = set()
    for suffix in ("a", "b"):
        doc = example_doc("gsm8k-llama2-7b")
        doc["metadata"]["name"] = "x" * 100 + "." + suffix
        meta = build_rayjob(FineTuneJob.model_validate(doc), CONFIG)["metadata"]
        assert is_dns1035_label(meta["name"], RAYJOB_NAME_LIMIT)
        assert all(len(v) <= 63 for v in meta["labels"].values())
        names.add(meta["name"])
    assert len(names) == 2


@pytest.mark.parametrize(
    ("queue", "suspend", "expected"),
    [(None, False, False), (None, True, True), ("q", False, True), ("q", True, True)],
)
def test_kueue_label_and_suspend(queue: str | None, suspend: bool, expected: bool) -> None:
    doc = example_doc("gsm8k-llama2-7b")
    doc["spec"]["runPolicy"] = {"suspend": suspend, **({"queueName": queue} if queue else {})}
    rayjob = build_rayjob(FineTuneJob.model_validate(doc), CONFIG)
    assert rayjob["spec"]["suspend"] is expected
    assert rayjob["metadata"]["labels"].get(QUEUE_LABEL) == queue


def test_render_without_uid_has_no_owner() -> None:
    doc = example_doc("gsm8k-llama2-7b")
    del doc["metadata"]["uid"]
    assert (
        "ownerReferences" not in build_rayjob(FineTuneJob.model_validate(doc), CONFIG)["metadata"]
    )


# --------------------------------------------------------------------------- CPU-only pools


def cpu_pool_job(**pool: Any) -> FineTuneJob:
    doc = example_doc("local-cluster")
    doc["spec"]["compute"]["nodePool"].update(pool)
    return FineTuneJob.model_validate(doc)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_cpu_pool_has_one_pod_per_worker_without_gpus(workers: int) -> None:
    doc = example_doc("local-cluster")
    doc["spec"]["compute"]["workers"] = workers
    job = FineTuneJob.model_validate(doc)
    assert worker_layout(job.spec) == (workers, 0)
    group = workers_of(build_rayjob(job, CONFIG))
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == workers
    assert group["groupName"] == CPU_WORKER_GROUP != WORKER_GROUP
    resources = container(group)["resources"]
    assert resources["requests"] == resources["limits"] == {"cpu": "500m", "memory": "3Gi"}
    assert resources["requests"] is not resources["limits"]  # no YAML anchors in the output


def test_cpu_pool_pods_host_exactly_one_ray_worker_and_no_gpu() -> None:
    rayjob = build_rayjob(example_job("local-cluster"), CONFIG)
    group = workers_of(rayjob)
    assert group["rayStartParams"] == CPU_WORKER_START_PARAMS == {"num-cpus": "1", "num-gpus": "0"}
    assert GPU_RESOURCE not in json.dumps(rayjob)
    pod = group["template"]["spec"]
    assert pod["nodeSelector"] == {INSTANCE_TYPE_LABEL: "kubetune-local"}
    assert "tolerations" not in pod


def test_cpu_pool_keeps_the_users_scheduling_without_the_gpu_toleration() -> None:
    toleration = {"key": "dedicated", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}
    pod = workers_of(
        build_rayjob(cpu_pool_job(nodeSelector={"pool": "cpu"}, tolerations=[toleration]), CONFIG)
    )["template"]["spec"]
    assert pod["nodeSelector"] == {INSTANCE_TYPE_LABEL: "kubetune-local", "pool": "cpu"}
    assert pod["tolerations"] == [toleration]


def test_cpu_pool_on_a_known_gpu_type_uses_only_the_given_size() -> None:
    job = cpu_pool_job(instanceType="g5.48xlarge", cpu="16", memory="64Gi")
    resources = container(workers_of(build_rayjob(job, CONFIG)))["resources"]
    assert resources == {
        "requests": {"cpu": "16", "memory": "64Gi"},
        "limits": {"cpu": "16", "memory": "64Gi"},
    }


def test_cpu_and_memory_override_the_derived_size_on_a_gpu_pool() -> None:
    doc = example_doc("gsm8k-llama2-13b")
    doc["spec"]["compute"]["nodePool"].update(cpu="100", memory="600Gi")
    group = workers_of(build_rayjob(FineTuneJob.model_validate(doc), CONFIG))
    assert container(group)["resources"] == {
        "requests": {"cpu": "100", "memory": "600Gi"},
        "limits": {"cpu": "100", "memory": "600Gi", GPU_RESOURCE: "8"},
    }
    assert group["groupName"] == WORKER_GROUP and group["rayStartParams"] == {}
    assert group["template"]["spec"]["tolerations"] == [GPU_TOLERATION]


def test_one_override_keeps_the_other_derived() -> None:
    doc = example_doc("gsm8k-llama2-13b")
    doc["spec"]["compute"]["nodePool"]["memory"] = "600Gi"
    res = container(workers_of(build_rayjob(FineTuneJob.model_validate(doc), CONFIG)))["resources"]
    assert res["requests"] == {"cpu": "172", "memory": "600Gi"}


def test_unknown_gpu_type_with_a_size_gets_requests_and_limits() -> None:
    doc = example_doc("gsm8k-llama2-13b")
    doc["spec"]["compute"]["nodePool"] = {
        "instanceType": "a3-highgpu-8g",
        "gpusPerNode": 8,
        "cpu": "200",
        "memory": "1800Gi",
    }
    res = container(workers_of(build_rayjob(FineTuneJob.model_validate(doc), CONFIG)))["resources"]
    assert res == {
        "requests": {"cpu": "200", "memory": "1800Gi"},
        "limits": {"cpu": "200", "memory": "1800Gi", GPU_RESOURCE: "8"},
    }


def submitter_resources(job: FineTuneJob) -> dict[str, Any]:
    template = build_rayjob(job, CONFIG)["spec"]["submitterPodTemplate"]
    return container({"template": template})["resources"]


def test_submitter_size_defaults_and_is_configurable() -> None:
    assert submitter_resources(example_job("gsm8k-llama2-13b")) == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "500m", "memory": "1Gi"},
    }
    small = submitter_resources(example_job("local-cluster"))
    assert small["requests"] == small["limits"] == {"cpu": "250m", "memory": "512Mi"}


def test_local_cluster_fits_two_cpus() -> None:
    """The example's promise: head, workers and submitter request 1750m of the 2 CPUs."""
    rayjob = build_rayjob(example_job("local-cluster"), CONFIG)
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
    workers = workers_of(rayjob)
    submitter = {"template": rayjob["spec"]["submitterPodTemplate"]}
    pods = [(head, 1), (workers, workers["replicas"]), (submitter, 1)]
    millicores = sum(
        count * _millicores(container(pod)["resources"]["requests"]["cpu"]) for pod, count in pods
    )
    assert millicores == 1750


def _millicores(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(quantity) * 1000
