"""Operator configuration from environment variables, with documented defaults.

Pure (no kopf/kubernetes imports) because the builders read it too: `kubetune render`
previews exactly what an operator with the same environment would create.

| variable | default | meaning |
| --- | --- | --- |
| KUBETUNE_NAMESPACES | "" (all) | comma-separated namespaces to watch; empty watches the cluster |
| KUBETUNE_TRAINER_IMAGE | ghcr.io/kubetune/trainer:0.1.0 | image when spec.compute.image is unset |
| KUBETUNE_CPU_HEADROOM | 0.10 | fraction of a node's vCPUs left to kubelet, system and daemonsets |
| KUBETUNE_MEMORY_HEADROOM | 0.10 | fraction of a node's memory left to kubelet, system and daemonsets |
| KUBETUNE_ACTIVE_DEADLINE_SECONDS | 0 (none) | RayJob deadline when runPolicy.activeDeadlineSeconds is unset |
| KUBETUNE_PRE_RUNNING_DEADLINE_SECONDS | 1800 | RayJob pre-running deadline when runPolicy.preRunningDeadlineSeconds is unset: a job whose pods never start fails after this long instead of waiting forever; 0 disables |
| KUBETUNE_STALL_TIMEOUT_SECONDS | 1800 | no trainer progress (an optimizer step, an evaluated batch) for this long marks a running job Stalled when runPolicy.stallTimeoutSeconds is unset; 0 disables |
| KUBETUNE_TTL_SECONDS_AFTER_FINISHED | 600 | Ray cluster lifetime after the run when runPolicy sets none |
| KUBETUNE_SUBMISSION_MODE | K8sJobMode | RayJob submissionMode (see builders/rayjob.py for why) |
| KUBETUNE_PEERING | "" (standalone) | kopf peering name for 2+ replicas (needs kopf's peering CRD) |
| KUBETUNE_PEERING_PRIORITY | random 1-1000000 | this replica's priority; the highest one is active |
| KUBETUNE_PEERING_LIFETIME | 60 | seconds a silent leader stays leader before a standby takes over |
| KUBETUNE_HEALTH_PORT | 8080 | liveness endpoint port (/healthz) |
| KUBETUNE_METRICS_PORT | 9090 | Prometheus metrics port (/metrics); 0 disables |
| KUBETUNE_BIND_ADDRESS | 0.0.0.0 | address of the liveness and metrics servers |
| KUBETUNE_KUBERAY_NAMESPACE | kuberay-system | namespace of the KubeRay operator (the only one a job's NetworkPolicy lets reach the Ray dashboard) |
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass

SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "SidecarMode")


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()
    trainer_image: str = "ghcr.io/kubetune/trainer:0.1.0"
    cpu_headroom: float = 0.10
    memory_headroom: float = 0.10
    active_deadline_seconds: int | None = None
    # Long enough for a node autoscaler to bring up GPU nodes and pull a large image onto
    # them; short enough that an unschedulable or unpullable job says so the same hour.
    pre_running_deadline_seconds: int | None = 1800
    # Above the longest quiet stretch of a healthy run (a 70B checkpoint save takes minutes)
    # and below the 30-minute collective timeout DeepSpeed sets, which would otherwise be the
    # first signal of a hang.
    stall_timeout_seconds: int | None = 1800
    ttl_seconds_after_finished: int = 600
    submission_mode: str = "K8sJobMode"
    peering: str = ""
    peering_priority: int = 0
    peering_lifetime: int = 60
    health_port: int = 8080
    metrics_port: int = 9090
    bind_address: str = "0.0.0.0"
    kuberay_namespace: str = "kuberay-system"

    def __post_init__(self) -> None:
        for name in ("cpu_headroom", "memory_headroom"):
            value = getattr(self, name)
            if not 0 <= value < 0.9:
                raise ValueError(f"{name} must be in [0, 0.9), got {value}")
        if self.submission_mode not in SUBMISSION_MODES:
            raise ValueError(f"submission mode must be one of {SUBMISSION_MODES}")

    def stall_timeout(self, policy_seconds: int | None) -> int | None:
        """The job's stall timeout: runPolicy.stallTimeoutSeconds (0 disables), else ours."""
        if policy_seconds is not None:
            return policy_seconds or None
        return self.stall_timeout_seconds

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Read the KUBETUNE_* variables; unset or empty ones keep the defaults above."""
        env = os.environ if env is None else env
        defaults = cls()

        def get(name: str) -> str | None:
            value = env.get(f"KUBETUNE_{name}", "").strip()
            return value or None

        deadline = int(get("ACTIVE_DEADLINE_SECONDS") or 0)
        pre_running = get("PRE_RUNNING_DEADLINE_SECONDS")
        stall = get("STALL_TIMEOUT_SECONDS")
        return cls(
            namespaces=tuple(n.strip() for n in (get("NAMESPACES") or "").split(",") if n.strip()),
            trainer_image=get("TRAINER_IMAGE") or defaults.trainer_image,
            cpu_headroom=float(get("CPU_HEADROOM") or defaults.cpu_headroom),
            memory_headroom=float(get("MEMORY_HEADROOM") or defaults.memory_headroom),
            active_deadline_seconds=deadline or None,
            pre_running_deadline_seconds=(
                defaults.pre_running_deadline_seconds
                if pre_running is None
                else int(pre_running) or None
            ),
            stall_timeout_seconds=(
                defaults.stall_timeout_seconds if stall is None else int(stall) or None
            ),
            ttl_seconds_after_finished=int(
                get("TTL_SECONDS_AFTER_FINISHED") or defaults.ttl_seconds_after_finished
            ),
            submission_mode=get("SUBMISSION_MODE") or defaults.submission_mode,
            peering=get("PEERING") or "",
            # Replicas of one Deployment share their environment; equal priorities would make
            # kopf run them all (with a warning), so each replica draws its own.
            peering_priority=int(get("PEERING_PRIORITY") or random.randint(1, 1_000_000)),
            peering_lifetime=int(get("PEERING_LIFETIME") or defaults.peering_lifetime),
            health_port=int(get("HEALTH_PORT") or defaults.health_port),
            metrics_port=int(get("METRICS_PORT") or defaults.metrics_port),
            bind_address=get("BIND_ADDRESS") or defaults.bind_address,
            kuberay_namespace=get("KUBERAY_NAMESPACE") or defaults.kuberay_namespace,
        )
