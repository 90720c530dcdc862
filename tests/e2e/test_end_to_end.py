"""End to end: kubectl-apply a FineTuneJob, the operator creates the RayJob, its entrypoint
runs for real on this machine (real Ray, transformers, the real GSM8k rows), and the learning
curve, best checkpoint and evaluation scores reach `.status` and `kubectl get ftj`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION, FineTuneJobStatus
from tests.support import transcripts
from tests.support.local_kuberay import LocalKubeRay

pytestmark = pytest.mark.e2e

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def e2e_job(name: str) -> dict:
    return yaml.safe_load(f"""
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata: {{name: {name}}}
spec:
  model: {{name: "builtin:tiny-llama"}}
  task: {{preset: gsm8k}}
  data:
    train: {{uri: pvc://datasets/gsm8k/train.jsonl}}
    validationFraction: 0.2
    test: {{uri: pvc://datasets/gsm8k/test.jsonl}}
    maxSamples: 48
  training:
    epochs: 2
    learningRate: 1.0e-3
    batchSizePerDevice: 8
    contextLength: 256
    precision: fp32
    gradientCheckpointing: false
    deepspeed: {{enabled: false, offloadOptimizer: false}}
  evaluation: {{maxSamples: 4, maxNewTokens: 16}}
  compute: {{workers: 1, nodePool: {{instanceType: g5.xlarge}}}}
  output: {{storageURI: pvc://checkpoints/{name}}}
""")


def wait_for_phase(
    custom: client.CustomObjectsApi, namespace: str, name: str, timeout: float
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        if job.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return job
        time.sleep(1)
    raise AssertionError(
        f"{name} did not finish in {timeout} s: {json.dumps(job.get('status'), indent=1)}"
    )


def test_finetunejob_runs_end_to_end(
    control_plane, kube_api, namespace, operator_process, kubectl, tmp_path
):
    pvc_root = tmp_path / "pvc"
    (pvc_root / "checkpoints").mkdir(parents=True)
    (pvc_root / "datasets").symlink_to(DATASETS)
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(e2e_job("e2e-gsm8k")))
    custom = client.CustomObjectsApi(kube_api)
    with LocalKubeRay(
        kube_api, control_plane.server, control_plane.ca_path, namespace, pvc_root, tmp_path
    ) as kuberay:
        applied = kubectl("apply", "-n", namespace, "-f", str(manifest))
        assert applied.returncode == 0, applied.stderr
        job = wait_for_phase(custom, namespace, "e2e-gsm8k", timeout=600)
        logs = "\n".join(kuberay.logs.values())
    status = FineTuneJobStatus.model_validate(job["status"])
    assert status.phase == "Succeeded", f"{status.message}\n{logs[-3000:]}"
    (history,) = kuberay.history.values()  # this double too writes what real KubeRay wrote
    assert transcripts.differences(history, transcripts.SUCCESS) == []
    assert [e.epoch for e in status.epochs] == [1, 2]
    best = min(status.epochs, key=lambda e: e.validation_perplexity)
    assert status.best_checkpoint is not None and status.best_checkpoint.epoch == best.epoch
    checkpoint = pvc_root / status.best_checkpoint.uri.removeprefix("pvc://")
    assert (checkpoint / "config.json").exists() and (checkpoint / "tokenizer.json").exists()
    assert status.evaluation is not None and status.evaluation.samples == 4
    assert 0.0 <= status.evaluation.score <= 1.0
    assert {c.type for c in status.conditions} >= {"Succeeded"}
    table = kubectl("get", "ftj", "-n", namespace, "e2e-gsm8k")
    row = table.stdout.splitlines()[1].split()
    assert row[1:5] == ["Succeeded", "builtin:tiny-llama", "gsm8k", "2"]
    assert float(row[5]) == pytest.approx(best.validation_perplexity, rel=1e-3)


def wait_for_first_report(custom: client.CustomObjectsApi, namespace: str, name: str) -> None:
    """Until the trainer's first report is in the job's status (the trainer runs)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status = job.get("status") or {}
        if status.get("phase") == "Training" and status.get("progress"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{name} never reported from its trainer: {job.get('status')}")


OUTAGE_S = 40


def test_an_api_server_outage_during_training_loses_nothing(
    control_plane, kube_api, namespace, operator_process, kubectl, tmp_path
):
    """The API server dies while the trainer runs and comes back 40 s later: the trainer's
    report writes fail meanwhile without holding training up, the latest state reaches the
    API server when it answers again, the final report waits for it, and the status ends
    complete (every epoch, the best checkpoint, the scores)."""
    pvc_root = tmp_path / "pvc"
    (pvc_root / "checkpoints").mkdir(parents=True)
    (pvc_root / "datasets").symlink_to(DATASETS)
    manifest = tmp_path / "job.yaml"
    job_manifest = e2e_job("e2e-outage")
    job_manifest["spec"]["training"]["epochs"] = 3
    manifest.write_text(yaml.safe_dump(job_manifest))
    custom = client.CustomObjectsApi(kube_api)
    with LocalKubeRay(
        kube_api, control_plane.server, control_plane.ca_path, namespace, pvc_root, tmp_path
    ) as kuberay:
        assert kubectl("apply", "-n", namespace, "-f", str(manifest)).returncode == 0
        wait_for_first_report(custom, namespace, "e2e-outage")
        with control_plane.apiserver_down():
            time.sleep(OUTAGE_S)
        job = wait_for_phase(custom, namespace, "e2e-outage", timeout=600)
        logs = "\n".join(kuberay.logs.values())
    status = FineTuneJobStatus.model_validate(job["status"])
    assert status.phase == "Succeeded", f"{status.message}\n{logs[-3000:]}"
    assert "kubetune: report write failed (1 in a row)" in logs  # the outage hit the trainer
    assert "kubetune: report delivered after" in logs
    assert [e.epoch for e in status.epochs] == [1, 2, 3]
    assert status.steps and status.progress is not None
    assert status.progress.step == status.progress.total_steps > 0
    assert status.best_checkpoint is not None
    assert status.evaluation is not None and status.evaluation.samples == 4
