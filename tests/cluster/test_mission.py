"""The mission on real pods: `kubectl apply -f examples/local-cluster.yaml` on the local cluster.

The real KubeRay operator creates the RayCluster and the submitter, the trainer trains inside
the trainer image built from trainer_image/Dockerfile, writes its report with its pod's own
service-account token, and `.status` reaches Succeeded with the learning curve, a best
checkpoint that exists on the volume and loads, and evaluation scores. The RayJob states the
real KubeRay went through are checked against (or, with KUBETUNE_RECORD_TRANSCRIPTS=1, written
to) a committed transcript, which keeps the fast tiers' KubeRay double honest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.pods import SCRATCH_VOLUME
from kubetune.api.v1alpha1 import FineTuneJobStatus
from tests.support import transcripts
from tests.support.cluster import CHECKPOINTS_CLAIM, OPERATOR_NAMESPACE, LocalCluster

# The first test of the package pays for bringing the cluster up, which on a cold machine
# includes building the binaries and images (tens of minutes): pytest-timeout counts fixtures.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(5400)]

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "local-cluster.yaml"
RUN_TIMEOUT = 900
RAY_GONE_WITHIN = 60


def _get(cluster: LocalCluster, kind: str, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", kind, name, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _ray_pods(cluster: LocalCluster, job: str) -> list[str]:
    pods = json.loads(cluster.kubectl("get", "pods", "-o", "json").stdout)["items"]
    return [
        p["metadata"]["name"]
        for p in pods
        if p["metadata"].get("labels", {}).get("ray.io/node-type")
        and p["metadata"]["name"].startswith(job)
    ]


def _worker_scratch(cluster: LocalCluster, job: str) -> tuple[dict[str, Any], list[str]] | None:
    """A running worker pod's scratch volume as declared, and what the trainer has staged in
    it, read from the kubelet's emptyDir folder on this node; None until a worker stages."""
    pods = json.loads(cluster.kubectl("get", "pods", "-o", "json").stdout)["items"]
    for pod in pods:
        labels = pod["metadata"].get("labels", {})
        if labels.get("ray.io/node-type") != "worker" or not pod["metadata"]["name"].startswith(
            job
        ):
            continue
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == SCRATCH_VOLUME)
        folder = (
            cluster.state
            / "kubelet"
            / "pods"
            / pod["metadata"]["uid"]
            / "volumes"
            / "kubernetes.io~empty-dir"
            / SCRATCH_VOLUME
        )
        staged = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        if staged:
            return volume, staged
    return None


PROBE = """
import json, urllib.error, urllib.request
request = urllib.request.Request(
    "http://%s:8265/api/jobs/", data=json.dumps({"entrypoint": "echo pwned"}).encode(),
    headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(request, timeout=20)
    print("PROBE SUBMITTED")
except urllib.error.HTTPError as error:
    print("PROBE HTTP", error.code)
except Exception as error:
    print("PROBE ERROR", type(error).__name__, error)
"""


def _submit_from_outside(cluster: LocalCluster, rayjob: dict[str, Any]) -> str:
    """What the Jobs API says to a pod that is not the job's (no Ray token): one try."""
    head = f"{rayjob['status']['rayClusterName']}-head-svc"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "outsider", "labels": {"app": "outsider"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "probe",
                    "image": cluster.images["trainer"],
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", PROBE % head],
                    "resources": {"limits": {"cpu": "200m", "memory": "256Mi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    cluster.kubectl("delete", "pod", "outsider", "--ignore-not-found", "--wait=true")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    cluster.kubectl(
        "wait",
        "--for=jsonpath={.status.phase}=Succeeded",
        "pod/outsider",
        "--timeout=180s",
        check=False,
        timeout=200,
    )
    logs = cluster.kubectl("logs", "outsider", check=False).stdout
    cluster.kubectl("delete", "pod", "outsider", "--ignore-not-found", "--wait=false")
    return logs


def _follow(
    cluster: LocalCluster, name: str
) -> tuple[dict[str, Any], list[transcripts.State], list[str], str, Any]:
    """Poll the job and its RayJob until the job is terminal; the distinct states seen, what
    the Jobs API said to an outsider while the job trained, and a worker's scratch volume."""
    states: list[transcripts.State] = []
    phases: list[str] = []
    probe = ""
    scratch = None
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        job = _get(cluster, "finetunejob", name) or {}
        status = job.get("status", {})
        rayjob_name = (status.get("rayJob") or {}).get("name")
        rayjob = _get(cluster, "rayjob", rayjob_name) if rayjob_name else None
        if rayjob is not None:
            transcripts.note_change(states, transcripts.state_of(rayjob.get("status")))
        phase = status.get("phase")
        if phase:
            transcripts.note_change(phases, phase)
        if phase == "Training" and scratch is None:
            scratch = _worker_scratch(cluster, name)
        if phase == "Training" and not probe and rayjob is not None and scratch is not None:
            probe = _submit_from_outside(cluster, rayjob)
        if phase in ("Succeeded", "Failed"):
            return job, states, phases, probe, scratch
        time.sleep(1)
    raise AssertionError(
        f"{name} not finished in {RUN_TIMEOUT} s; phases {phases}, "
        f"RayJob states {states}\n" + cluster.kubectl("get", "pods", "-A", "-o", "wide").stdout
    )


def test_local_cluster_example_succeeds_on_real_pods(local_cluster: LocalCluster) -> None:
    cluster = local_cluster
    manifest = yaml.safe_load(EXAMPLE.read_text())
    name = manifest["metadata"]["name"]
    cluster.kubectl("delete", "finetunejob", name, "--ignore-not-found", "--wait=true", timeout=180)
    # The namespace enforces the restricted Pod Security Standard: every pod KubeRay makes
    # from our RayJob must pass it, or the job never starts.
    cluster.kubectl(
        "label",
        "namespace",
        "default",
        "--overwrite",
        "pod-security.kubernetes.io/enforce=restricted",
    )
    applied = cluster.kubectl("apply", "-f", str(EXAMPLE))
    assert f"finetunejob.kubetune.dev/{name} created" in applied.stdout

    job, states, phases, probe, scratch = _follow(cluster, name)
    finished = time.monotonic()
    status = FineTuneJobStatus.model_validate(job["status"])
    assert status.phase == "Succeeded", (
        f"{status.message}\nRayJob states {states}\n"
        + cluster.kubectl(
            "logs", "-n", OPERATOR_NAMESPACE, "deploy/kubetune-operator", "--tail=50", check=False
        ).stdout
    )

    # The trainer staged on the worker's node-local scratch, sized by the plan in .status.
    assert status.plan is not None and status.plan.scratch_gib is not None
    assert scratch is not None, "no worker ever staged anything on its scratch volume"
    volume, staged = scratch
    assert volume["emptyDir"] == {"sizeLimit": f"{status.plan.scratch_gib}Gi"}
    assert any(entry.startswith("stage-") for entry in staged), staged

    # Ray token authentication: a pod that reaches the dashboard without the token cannot
    # submit (this bridge network enforces no NetworkPolicy, so only the token stops it).
    assert "PROBE HTTP 401" in probe, probe

    epochs = manifest["spec"]["training"]["epochs"]
    assert [e.epoch for e in status.epochs] == list(range(1, epochs + 1))
    assert all(e.validation_perplexity and e.validation_perplexity > 1 for e in status.epochs)
    best = min(status.epochs, key=lambda e: e.validation_perplexity or float("inf"))
    assert status.best_checkpoint is not None
    assert status.best_checkpoint.epoch == best.epoch
    uri = status.best_checkpoint.uri
    assert uri.startswith(f"pvc://{CHECKPOINTS_CLAIM}/")
    checkpoint = (
        cluster.state / "volumes" / "checkpoints" / uri.removeprefix(f"pvc://{CHECKPOINTS_CLAIM}/")
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert model.num_parameters() > 0 and len(tokenizer) > 0

    assert status.evaluation is not None and status.evaluation.task == "viggo"
    assert status.evaluation.samples > 0 and status.evaluation.metrics

    # The report reached .status through the pod's own token: the trainer's ServiceAccount.
    rayjob = _get(cluster, "rayjob", status.ray_job.name if status.ray_job else "")
    assert rayjob is None or rayjob["status"]["jobDeploymentStatus"] == "Complete"

    while _ray_pods(cluster, name) and time.monotonic() - finished < RAY_GONE_WITHIN:
        time.sleep(1)
    assert _ray_pods(cluster, name) == [], f"Ray pods still there {RAY_GONE_WITHIN} s after the end"

    # By uid: events of an earlier job of the same name outlive it.
    uid = job["metadata"]["uid"]
    events = json.loads(
        cluster.kubectl(
            "get",
            "events",
            "--field-selector",
            f"involvedObject.kind=FineTuneJob,involvedObject.uid={uid}",
            "-o",
            "json",
        ).stdout
    )
    reasons = [
        e["reason"] for e in sorted(events["items"], key=lambda e: e.get("firstTimestamp") or "")
    ]
    assert len(reasons) == len(set(reasons)) and reasons[-1] == "Succeeded", reasons
    assert "Training" in reasons, reasons
    described = cluster.kubectl("describe", "finetunejob", name).stdout
    assert "Succeeded" in described

    transcripts.check_polled(
        transcripts.SUCCESS,
        states,
        phases,
        "examples/local-cluster.yaml",
        ("Complete", "SUCCEEDED"),
    )
