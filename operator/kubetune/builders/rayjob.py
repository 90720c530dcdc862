"""Build the KubeRay RayJob (ray.io/v1) that runs one FineTuneJob. Pure: no I/O.

Layout
- Head group on the CPU pool (`spec.compute.head`), started with Ray `num-cpus: "0"` so no
  training task is ever scheduled there; it only runs the driver (the trainer entrypoint).
- One worker group of `ceil(workers / gpusPerNode)` pods, replicas = min = max and the
  in-tree autoscaler off: DeepSpeed needs a fixed world size. Each pod asks for its share of
  the node's GPUs as `nvidia.com/gpu` limits (Ray derives `--num-gpus` from them).
- Each worker pod stages checkpoints, downloads and the curriculum hand-off on a node-local
  scratch emptyDir at /kubetune-scratch (`KUBETUNE_SCRATCH_DIR`; hub downloads too, through
  `HF_HUB_CACHE`), never on the container's root filesystem. Its `sizeLimit` and the pod's `ephemeral-storage` request are the plan's
  disk need (`kubetune.planning.scratch_gib`), so the scheduler places the pod on a node with
  that much local disk; a model the planner cannot size gets the volume without a limit.
- A CPU-only pool (`gpusPerNode: 0`) gets one pod per worker instead, sized by
  `nodePool.cpu`/`nodePool.memory`, with no GPU limit and no GPU toleration, and Ray told
  `num-cpus: "1"`, `num-gpus: "0"` (see `CPU_WORKER_START_PARAMS`).

Pod size rule (documented contract, `pod_resources`): a pod with g of a node's G GPUs
requests `floor(share * vCPUs * (1 - cpuHeadroom))` CPUs and
`floor(share * memoryGiB * (1 - memoryHeadroom))` GiB, share = g / G, with requests equal to
limits (Guaranteed QoS, so the kernel never OOM-kills training for a neighbour's burst). The
headroom (default 10 %) covers kubelet/system reservations and daemonsets (CNI, GPU device
plugin, log agents), so a full-node pod always fits the node's allocatable. Instance types
kubetune does not know get GPU limits only. `nodePool.cpu` / `nodePool.memory`, when set,
replace the derived (or missing) CPU / memory, still with requests equal to limits; on a
CPU-only pool they are the whole size.

Submission mode: K8sJobMode (the default of every KubeRay release since 1.0). The submitter
is a Kubernetes Job that retries `ray job submit` until the dashboard is up, so a slow head
does not fail the run, its logs stay readable with kubectl, and submission problems surface
as `SubmissionFailed`. HTTPMode would make KubeRay's own process the submitter (no logs, no
retries) and SidecarMode needs KubeRay 1.5+.

Secrets never appear as values: the HF token is a `secretKeyRef`, storage credentials an
`envFrom` of the whole Secret.

Ray token authentication is on (`authOptions.mode: token`, KubeRay 1.5.1+, Ray 2.52+):
KubeRay generates the token Secret, owns it, and injects RAY_AUTH_MODE/RAY_AUTH_TOKEN into the
head, the workers, their wait-gcs-ready init container and the submitter; its own status
polling sends the token too. kubetune never creates or reads that Secret. Without the token a
pod that reaches the dashboard (8265) cannot submit code that would run with the job's secrets.

Every pod meets the `restricted` Pod Security Standard: non-root (uid 1000, the `ray` user of
Ray's and kubetune's images), no privilege escalation, no capabilities, the runtime's default
seccomp profile. KubeRay copies the Ray container's securityContext into the init container it
injects and mounts /dev/shm as a memory emptyDir itself; the root filesystem stays writable
(Ray's session directory, compile caches), which `restricted` allows.
"""

from __future__ import annotations

import copy
import math
import re
import shlex
from typing import Any

from kubetune.api.instance_types import lookup_instance_type
from kubetune.api.pods import (
    HF_HUB_CACHE_ENV,
    PREEMPT_GRACE_SECONDS,
    PREEMPT_HOOK,
    PVC_ROOT,
    PVC_ROOT_ENV,
    SCRATCH_DIR,
    SCRATCH_ENV,
    SCRATCH_HUB_CACHE,
    SCRATCH_VOLUME,
)
from kubetune.api.report import REPORT_SINGULAR
from kubetune.api.v1alpha1 import (
    FineTuneJob,
    FineTuneJobSpec,
    NodePoolSpec,
    Toleration,
    stages_of,
)
from kubetune.builders.meta import namespace_of, object_meta, pod_labels, uid_of
from kubetune.builders.naming import rayjob_name, report_name, service_account_name
from kubetune.config import OperatorConfig

RAY_API_VERSION = "ray.io/v1"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
WORKER_GROUP = "gpu-workers"
CPU_WORKER_GROUP = "cpu-workers"
# Ray's logical resources of a CPU-only worker pod. KubeRay would derive num-cpus from the CPU
# limit rounded up (resource.Quantity.Value(): 500m -> 1, 1500m -> 2), and Ray Train asks for
# 1 CPU per worker when it does not use GPUs; a pod of 2 or more logical CPUs would then take
# several workers (Ray Train packs them) and leave other pods idle. Exactly one logical CPU
# makes it one worker per pod whatever the pod's size, and lets a pod under one core host a
# worker at all. The driver prepares the data itself (no Ray Data on the cluster), so no spare
# logical CPUs are needed; evaluation's 1-CPU task runs after training has freed the workers.
# num-gpus 0: a pod that can see a node's GPUs anyway (an image with NVIDIA_VISIBLE_DEVICES=all
# on a GPU node) must not advertise them to Ray.
CPU_WORKER_START_PARAMS = {"num-cpus": "1", "num-gpus": "0"}
RAY_UID = 1000  # the `ray` user of rayproject/ray and kubetune's trainer image
AUTH_OPTIONS = {"mode": "token"}
# The pod and container securityContexts that satisfy the `restricted` Pod Security Standard.
POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": RAY_UID,
    "fsGroup": RAY_UID,  # claims mounted for checkpoints are writable by the trainer
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": RAY_UID,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# RayJob fields kubetune writes that older KubeRay CRDs lack, and the release that added them.
# RayJobs are created with strict field validation, so an older CRD refuses them by name
# instead of silently dropping them (an unauthenticated head).
KUBERAY_FIELD_SINCE = {
    "spec.rayClusterSpec.authOptions": ("1.5.1", "Ray token authentication"),
    "spec.preRunningDeadlineSeconds": ("1.6.0", "a job whose pods never start fails"),
}
_UNKNOWN_FIELD = re.compile(r'unknown field "([^"]+)"')
TRAINER_MODULE = "kubetune_trainer.entrypoint"


def worker_layout(spec: FineTuneJobSpec) -> tuple[int, int]:
    """(pods, GPUs per pod): one GPU-less pod per worker on a CPU-only pool; otherwise whole
    nodes when workers exceed one node, else one partial pod."""
    per_node = spec.compute.node_pool.effective_gpus_per_node
    workers = spec.compute.workers
    if spec.compute.node_pool.cpu_only:
        return workers, 0
    if workers <= per_node:
        return 1, workers
    return math.ceil(workers / per_node), per_node


def _cpu_quantity(cores: float) -> str:
    """Whole cores (rounded down) from one core up, millicores below."""
    return str(math.floor(cores)) if cores >= 1 else f"{math.floor(cores * 1000)}m"


def _derived_size(pool: NodePoolSpec, gpus: int, config: OperatorConfig) -> dict[str, str]:
    """CPU and memory of a pod with `gpus` of a known instance type's GPUs (module docstring)."""
    known = lookup_instance_type(pool.instance_type)
    if known is None or gpus == 0:
        return {}
    share = gpus / pool.effective_gpus_per_node
    return {
        "cpu": _cpu_quantity(share * known.vcpus * (1 - config.cpu_headroom)),
        "memory": f"{math.floor(share * known.memory_gib * (1 - config.memory_headroom))}Gi",
    }


def pod_resources(
    spec: FineTuneJobSpec, gpus: int, config: OperatorConfig, scratch_gib: int | None = None
) -> dict[str, Any]:
    """Requests/limits of one worker pod; see the module docstring for the rule. The scratch
    volume's size is requested, not limited: its `sizeLimit` bounds it already."""
    pool = spec.compute.node_pool
    explicit = {k: v for k, v in (("cpu", pool.cpu), ("memory", pool.memory)) if v is not None}
    size = {**_derived_size(pool, gpus, config), **explicit}
    limits = {**size, **({GPU_RESOURCE: str(gpus)} if gpus else {})}
    requests = {**size, **({"ephemeral-storage": f"{scratch_gib}Gi"} if scratch_gib else {})}
    return {"requests": requests, "limits": limits} if requests else {"limits": limits}


def trainer_entrypoint(job: FineTuneJob) -> str:
    """The trainer command line (the trainer contract), shell-quoted for `ray job submit`.

    The spec is not in it: the trainer reads its FineTuneJob through the API (a Role allows
    exactly that one object), so the command stays short whatever the templates' size, far
    below Linux's 128 KiB argument limit. The uid pins the run to this incarnation.
    """
    uid = uid_of(job)
    return shlex.join(
        [
            "python",
            "-m",
            TRAINER_MODULE,
            "--job-name",
            job.metadata.name,
            "--namespace",
            namespace_of(job),
            *(["--job-uid", uid] if uid else []),
            "--report",
            f"{REPORT_SINGULAR}:{report_name(job.metadata.name)}",
        ]
    )


def pvc_claims(spec: FineTuneJobSpec) -> list[str]:
    """Claims named by pvc://claim/path URIs; they are mounted at /mnt/pvc/<claim>."""
    uris = [spec.output.storage_uri]
    for stage in stages_of(spec):
        uris += [s.uri for s in (stage.data.train, stage.data.validation, stage.data.test) if s]
    return sorted({u.removeprefix("pvc://").split("/")[0] for u in uris if u.startswith("pvc://")})


def _env(spec: FineTuneJobSpec) -> dict[str, Any]:
    env: list[dict[str, Any]] = [{"name": PVC_ROOT_ENV, "value": PVC_ROOT}]
    token = spec.model.token_secret_ref
    if token is not None:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}},
            }
        )
    result: dict[str, Any] = {"env": env}
    creds = spec.output.credentials_secret_ref
    if creds is not None:
        result["envFrom"] = [{"secretRef": {"name": creds.name}}]
    return result


def _volumes(spec: FineTuneJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    claims = pvc_claims(spec)
    volumes = [
        {"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": c}}
        for i, c in enumerate(claims)
    ]
    mounts = [{"name": f"pvc-{i}", "mountPath": f"{PVC_ROOT}/{c}"} for i, c in enumerate(claims)]
    return volumes, mounts


def with_scratch(template: dict[str, Any], scratch_gib: int | None) -> dict[str, Any]:
    """A worker pod template with its node-local scratch volume (module docstring)."""
    pod = template["spec"]
    container = pod["containers"][0]
    empty_dir = {"sizeLimit": f"{scratch_gib}Gi"} if scratch_gib else {}
    pod["volumes"] = [*pod.get("volumes", []), {"name": SCRATCH_VOLUME, "emptyDir": empty_dir}]
    container["volumeMounts"] = [
        *container.get("volumeMounts", []),
        {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_DIR},
    ]
    container["env"] = [
        *container["env"],
        {"name": SCRATCH_ENV, "value": SCRATCH_DIR},
        {"name": HF_HUB_CACHE_ENV, "value": SCRATCH_HUB_CACHE},
    ]
    return template


def _tolerations(items: list[Toleration], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result = [t.to_wire() for t in items]
    return result + [t for t in extra if t not in result]


def _pod_template(
    job: FineTuneJob,
    config: OperatorConfig,
    container: dict[str, Any],
    scheduling: dict[str, Any],
    component: str,
) -> dict[str, Any]:
    volumes, mounts = _volumes(job.spec)
    container = {
        "image": job.spec.compute.image or config.trainer_image,
        **container,
        **_env(job.spec),
        "securityContext": _container_security(),
    }
    if mounts:
        container["volumeMounts"] = mounts
    pod: dict[str, Any] = {
        "serviceAccountName": service_account_name(job.metadata.name),
        "securityContext": _pod_security(),
        **scheduling,
        "containers": [container],
    }
    if volumes:
        pod["volumes"] = volumes
    return {"metadata": {"labels": pod_labels(job, component)}, "spec": pod}


def _pod_security() -> dict[str, Any]:
    return copy.deepcopy(POD_SECURITY_CONTEXT)  # a copy per pod: YAML dumps no shared anchors


def _container_security() -> dict[str, Any]:
    return copy.deepcopy(CONTAINER_SECURITY_CONTEXT)


def _scheduling(selector: dict[str, str], tolerations: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if selector:
        result["nodeSelector"] = selector
    if tolerations:
        result["tolerations"] = tolerations
    return result


def head_group(job: FineTuneJob, config: OperatorConfig) -> dict[str, Any]:
    head = job.spec.compute.head
    resources = {"cpu": head.cpu, "memory": head.memory}
    container = {
        "name": "ray-head",
        "resources": {"requests": resources, "limits": dict(resources)},
    }
    scheduling = _scheduling(dict(head.node_selector), _tolerations(head.tolerations, []))
    return {
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
        "template": _pod_template(job, config, container, scheduling, "ray-head"),
    }


def worker_group(
    job: FineTuneJob, config: OperatorConfig, scratch_gib: int | None = None
) -> dict[str, Any]:
    pool = job.spec.compute.node_pool
    pods, gpus = worker_layout(job.spec)
    resources = pod_resources(job.spec, gpus, config, scratch_gib)
    container = {
        "name": "ray-worker",
        "resources": resources,
        # Kubelet runs it before the SIGTERM: the training saves at its next step boundary.
        "lifecycle": {"preStop": {"exec": {"command": list(PREEMPT_HOOK)}}},
    }
    selector = {INSTANCE_TYPE_LABEL: pool.instance_type, **pool.node_selector}
    gpu_toleration = [] if pool.cpu_only else [GPU_TOLERATION]
    scheduling = _scheduling(selector, _tolerations(pool.tolerations, gpu_toleration))
    return {
        "groupName": CPU_WORKER_GROUP if pool.cpu_only else WORKER_GROUP,
        "replicas": pods,
        "minReplicas": pods,
        "maxReplicas": pods,
        "rayStartParams": dict(CPU_WORKER_START_PARAMS) if pool.cpu_only else {},
        "template": with_grace_period(
            with_scratch(
                _pod_template(job, config, container, scheduling, "ray-worker"), scratch_gib
            ),
            PREEMPT_GRACE_SECONDS,
        ),
    }


def with_grace_period(template: dict[str, Any], seconds: int) -> dict[str, Any]:
    """Room for the preStop hook's save between the stop request and the SIGKILL."""
    template["spec"]["terminationGracePeriodSeconds"] = seconds
    return template


def submitter_template(job: FineTuneJob, config: OperatorConfig) -> dict[str, Any]:
    """The K8sJobMode submitter runs `ray job submit` next to the head, on the CPU pool, sized
    by `spec.compute.submitter`."""
    head = job.spec.compute.head
    submitter = job.spec.compute.submitter
    size = {"cpu": submitter.cpu, "memory": submitter.memory}
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        # No API access: `ray job submit` needs the dashboard and the Ray token only.
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(),
        **_scheduling(dict(head.node_selector), _tolerations(head.tolerations, [])),
        "containers": [
            {
                "name": "ray-job-submitter",
                "image": job.spec.compute.image or config.trainer_image,
                "resources": {"requests": size, "limits": dict(size)},
                "securityContext": _container_security(),
            }
        ],
    }
    return {"metadata": {"labels": pod_labels(job, "ray-job-submitter")}, "spec": pod}


def desired_suspend(job: FineTuneJob) -> bool:
    """Created suspended when the user asks or when Kueue must admit it first (queueName)."""
    policy = job.spec.run_policy
    return policy.suspend or policy.queue_name is not None


def suspend_target(job: FineTuneJob) -> bool | None:
    """What spec.suspend of an existing RayJob must be after a runPolicy.suspend change.

    None = leave it alone: with a queue Kueue owns the flag (it unsuspends an admitted job
    whatever else set it), and runPolicy.suspend goes to the Workload (controller/reconcile).
    """
    policy = job.spec.run_policy
    return None if policy.queue_name else policy.suspend


def build_rayjob(
    job: FineTuneJob, config: OperatorConfig, scratch_gib: int | None = None
) -> dict[str, Any]:
    """The RayJob for `job`; see the module docstring for every choice. `scratch_gib` is the
    plan's node-local disk need (`kubetune.planning.scratch_gib`), None when unknown."""
    policy = job.spec.run_policy
    extra_labels = {QUEUE_LABEL: policy.queue_name} if policy.queue_name else {}
    spec: dict[str, Any] = {
        "entrypoint": trainer_entrypoint(job),
        "submissionMode": config.submission_mode,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": (
            policy.ttl_seconds_after_finished
            if policy.ttl_seconds_after_finished is not None
            else config.ttl_seconds_after_finished
        ),
        "backoffLimit": policy.backoff_limit,
        "suspend": desired_suspend(job),
        "rayClusterSpec": {
            "rayVersion": job.spec.compute.ray_version,
            "authOptions": dict(AUTH_OPTIONS),
            "enableInTreeAutoscaling": False,
            "headGroupSpec": head_group(job, config),
            "workerGroupSpecs": [worker_group(job, config, scratch_gib)],
        },
    }
    deadline = policy.active_deadline_seconds or config.active_deadline_seconds
    if deadline:
        spec["activeDeadlineSeconds"] = deadline
    pre_running = policy.pre_running_deadline_seconds or config.pre_running_deadline_seconds
    if pre_running:
        spec["preRunningDeadlineSeconds"] = pre_running
    if config.submission_mode == "K8sJobMode":
        spec["submitterPodTemplate"] = submitter_template(job, config)
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayJob",
        "metadata": object_meta(job, rayjob_name(job.metadata.name), "training", extra_labels),
        "spec": spec,
    }


def kuberay_too_old(message: str) -> str | None:
    """What to say when the API server refused a RayJob for fields its KubeRay CRD lacks."""
    missing = [f for f in _UNKNOWN_FIELD.findall(message) if f in KUBERAY_FIELD_SINCE]
    if not missing:
        return None
    needed = max((KUBERAY_FIELD_SINCE[f][0] for f in missing), key=_version_key)
    fields = "; ".join(f"{f} ({KUBERAY_FIELD_SINCE[f][1]})" for f in sorted(set(missing)))
    return (
        f"the installed KubeRay is older than {needed}: its RayJob CRD has no {fields}; "
        f"kubetune needs KubeRay {needed} or newer"
    )


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))
