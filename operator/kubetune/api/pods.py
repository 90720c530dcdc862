"""What the operator's pods give the trainer: mount points and the environment variables that
name them. The builders write them and the trainer reads them, so both import them from here."""

from __future__ import annotations

# pvc://claim/path URIs name claims mounted at <PVC_ROOT>/<claim>.
PVC_ROOT = "/mnt/pvc"
PVC_ROOT_ENV = "KUBETUNE_PVC_ROOT"
# Node-local scratch for staging checkpoints, downloads and the curriculum hand-off: an emptyDir
# sized by the plan, so a 26 GB (13B) or 140 GB (70B) checkpoint is never staged on the
# container's root filesystem, where the kubelet evicts pods on small root volumes.
SCRATCH_VOLUME = "kubetune-scratch"
SCRATCH_DIR = "/kubetune-scratch"
SCRATCH_ENV = "KUBETUNE_SCRATCH_DIR"
# Hub models are downloaded there too (the plan counts the base model download as node disk).
HF_HUB_CACHE_ENV = "HF_HUB_CACHE"
SCRATCH_HUB_CACHE = f"{SCRATCH_DIR}/huggingface-hub"
# Save on preemption: the worker pods' preStop hook (kubetune_trainer.preemption) asks the
# training to save at its next optimizer-step boundary and waits for the save, within the pod's
# grace period; the margin leaves Ray time to stop after the hook returns.
PREEMPT_GRACE_SECONDS = 120
PREEMPT_HOOK_MARGIN_SECONDS = 10
PREEMPT_HOOK = [
    "python",
    "-m",
    "kubetune_trainer.preemption",
    "--wait",
    str(PREEMPT_GRACE_SECONDS - PREEMPT_HOOK_MARGIN_SECONDS),
]
