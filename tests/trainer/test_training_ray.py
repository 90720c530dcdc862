"""Full runs on a real local Ray with real Accelerate/DeepSpeed on CPU, tiny Llama, real data.

Each TorchTrainer.fit() costs ~15-25 s, so the runs are few and each checks several things:
1. `kubetune run` of a two-stage curriculum (MathQA -> GSM8k) with DDP on 2 workers: outputs,
   loss falls, the best checkpoint reloads and generates with the special tokens.
2. DeepSpeed ZeRO-3 + optimizer offload on 2 workers, uninterrupted and with a worker killed
   mid-epoch: the retry resumes and ends with the same epochs and the same best checkpoint;
   every planned step runs at the planned learning rate, with zero warmup.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.trainer

TRAINING = {
    "learningRate": 1.0e-3,
    "batchSizePerDevice": 8,
    "contextLength": 384,
    "precision": "fp32",
    "gradientCheckpointing": False,
    "seed": 7,
}


def curriculum_manifest(datasets: Path) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "curriculum-test"},
        "spec": {
            "model": {"name": "builtin:tiny-llama"},
            "task": {"preset": "gsm8k"},
            "stages": [
                {
                    "name": "mathqa",
                    "task": {"preset": "mathqa"},
                    "training": {"epochs": 1},
                    "data": {
                        "train": {"uri": str(datasets / "mathqa" / "dev.json")},
                        "maxSamples": 96,
                    },
                },
                {
                    "name": "gsm8k",
                    "data": {
                        "train": {"uri": str(datasets / "gsm8k" / "train.jsonl")},
                        "test": {"uri": str(datasets / "gsm8k" / "test.jsonl")},
                        "maxSamples": 240,
                    },
                },
            ],
            "training": {
                **TRAINING,
                "epochs": 2,
                "checkpointsToKeep": 1,
                "deepspeed": {"enabled": False, "offloadOptimizer": False},
            },
            "evaluation": {"maxSamples": 4, "maxNewTokens": 16, "batchSize": 4},
            "compute": {"workers": 2},
            "output": {"storageURI": "checkpoints"},  # relative to the manifest's folder
        },
    }


def kubetune_run(manifest: Path, output: Path) -> int:
    from kubetune_trainer.local_run import add_run

    parser = argparse.ArgumentParser()
    add_run(parser.add_subparsers())
    args = parser.parse_args(["run", "-f", str(manifest), "--output", str(output)])
    return int(args.handler(args))


def run_to_success(tmp_path: Path, job: dict) -> tuple[dict, Path]:
    """`kubetune run` on `job` written to tmp_path; its status.json (Succeeded) and output dir."""
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job))
    output = tmp_path / "out"
    assert kubetune_run(manifest, output) == 0
    status = json.loads((output / "status.json").read_text())
    assert status["phase"] == "Succeeded"
    return status, output


def test_curriculum_ddp_run_learns_and_checkpoint_generates(tmp_path, datasets_dir):
    status, output = run_to_success(tmp_path, curriculum_manifest(datasets_dir))
    curve = [(e["stage"], e["epoch"]) for e in status["epochs"]]
    assert curve == [("mathqa", 1), ("gsm8k", 1), ("gsm8k", 2)]
    gsm = [e for e in status["epochs"] if e["stage"] == "gsm8k"]
    assert gsm[1]["trainLoss"] < gsm[0]["trainLoss"]
    assert gsm[1]["validationLoss"] < gsm[0]["validationLoss"]
    best = status["bestCheckpoint"]
    assert best["stage"] == "gsm8k" and best["epoch"] == 2
    run_root = Path(status["outputURI"])  # this run's own folder of the shared storage
    assert run_root.parent == tmp_path / "checkpoints" and run_root.name.startswith("run-")
    assert Path(best["uri"]).parent == run_root / "gsm8k"
    assert not (run_root / "gsm8k" / "epoch-001").exists()  # checkpointsToKeep 1
    assert status["evaluation"]["task"] == "gsm8k" and status["evaluation"]["samples"] == 4
    assert status["progress"]["step"] == status["progress"]["totalSteps"] > 0
    assert (output / "learning_curve.png").stat().st_size > 1000
    metrics = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [m["type"] for m in metrics if m["type"] != "step"] == ["epoch"] * 3 + ["evaluation"]
    assert_step_series(metrics, status, run_root)
    report = json.loads((output / "report.json").read_text())
    assert {d["split"] for d in report["data"]} >= {
        "mathqa/train",
        "gsm8k/validation",
        "gsm8k/test",
    }
    assert_checkpoint_generates(Path(best["uri"]))


def assert_step_series(metrics: list[dict], status: dict, storage: Path) -> None:
    """Per-step points of every stage: in metrics.jsonl (the full series, also in the stage's
    storage), each epoch's last step among them, and a downsampled copy in the status."""
    for stage in ("mathqa", "gsm8k"):
        points = [m for m in metrics if m["type"] == "step" and m["stage"] == stage]
        stored = (storage / stage / "steps.jsonl").read_text().splitlines()
        assert [{"type": "step", **json.loads(line)} for line in stored] == points
        steps = [p["step"] for p in points]
        assert steps == sorted(set(steps)) and steps[0] >= 1
        epoch_ends = [e["step"] for e in status["epochs"] if e["stage"] == stage]
        assert set(epoch_ends) <= set(steps)  # the last step of an epoch always records
        for point in points:
            assert point["trainLoss"] > 0 and point["learningRate"] > 0
            assert point["gradNorm"] > 0 and 0 < point["packingFill"] <= 1
            assert point["tokensPerSecond"] >= point["usefulTokensPerSecond"] > 0
    all_steps = [m for m in metrics if m["type"] == "step"]
    assert len(status["steps"]) == min(len(all_steps), 200)


def assert_checkpoint_generates(folder: Path) -> None:
    from kubetune_trainer.generation import generate
    from kubetune_trainer.model import load_model, load_tokenizer

    assert (folder / "model.safetensors").exists()
    tokenizer = load_tokenizer(str(folder))
    model = load_model(str(folder))
    for token in ("<START_Q>", "<END_Q>", "<START_A>", "<END_A>"):
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    prompt = "<START_Q>Tom has 3 apples and buys 2 more. How many apples?<END_Q><START_A>"
    [text] = generate(model, tokenizer, [prompt], "<END_A>", batch_size=1, max_new_tokens=24)
    assert isinstance(text, str) and "<END_A>" not in text


def deepspeed_spec(datasets: Path, storage: Path):
    from kubetune.validation import parse_spec

    return parse_spec(
        {
            "model": {"name": "builtin:tiny-llama"},
            "task": {"preset": "gsm8k"},
            "data": {"train": {"uri": str(datasets / "gsm8k" / "train.jsonl")}, "maxSamples": 96},
            "training": {
                **TRAINING,
                "epochs": 2,
                "checkpointsToKeep": 2,
                "warmupRatio": 0,  # DeepSpeed's own schedulers refused zero warmup steps
                "logEverySteps": 1,
                "deepspeed": {"enabled": True, "stage": 3, "offloadOptimizer": True},
            },
            "evaluation": {"enabled": False},
            "compute": {"workers": 2},
            "output": {"storageURI": str(storage)},
        }
    )


def run_spec(spec, workdir: Path, name: str, job_uid: str | None = None):
    from kubetune_trainer.reporting import FileReporter, ThrottledReporter
    from kubetune_trainer.runner import RunOptions, run_job

    report_path = workdir / "report.json"
    options = RunOptions(
        job_name=name,
        reporter=ThrottledReporter(FileReporter(report_path), 0),
        workdir=workdir,
        report_target=f"file:{report_path}",
        local=True,
        report_interval_s=1.0,
        job_uid=job_uid,
    )
    return run_job(spec, options)


def step_log(path: Path) -> list[tuple[int, int, list[int]]]:
    """(epoch, optimizer step, rank 0's data) of every step trained, in order, all attempts."""
    lines = path.read_text().splitlines()
    return [(p["epoch"], p["step"], p["data"]) for p in map(json.loads, lines)]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, datasets_dir):
    """The uninterrupted DeepSpeed run the interrupted ones must match, and its step log."""
    tmp = tmp_path_factory.mktemp("ds-clean")
    log = tmp / "steps.jsonl"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KUBETUNE_FAULT_INJECT", json.dumps({"stepLog": str(log)}))
        report = run_spec(deepspeed_spec(datasets_dir, tmp / "ck"), tmp / "work", "ds-clean")
    return report, step_log(log)


def test_deepspeed_zero3_offload_resumes_after_worker_kill(
    clean_run, tmp_path, datasets_dir, monkeypatch
):
    """A worker killed outright (no chance to save) mid-epoch 2: Ray Train restarts the worker
    group, which resumes from the last durable point, epoch 1's end, in the job's storage; the
    one step done since then is trained again, nothing else."""
    clean, clean_steps = clean_run
    marker, log = tmp_path / "killed", tmp_path / "steps.jsonl"
    monkeypatch.setenv(
        "KUBETUNE_FAULT_INJECT",
        json.dumps({"rank": 1, "epoch": 2, "step": 2, "marker": str(marker), "stepLog": str(log)}),
    )
    storage = tmp_path / "ck-kill"
    resumed = run_spec(deepspeed_spec(datasets_dir, storage), tmp_path / "kill", "ds-kill")

    assert marker.exists(), "the fault was never injected"
    assert clean.phase == resumed.phase == "Succeeded"
    assert [e.epoch for e in resumed.epochs] == [e.epoch for e in clean.epochs] == [1, 2]
    for a, b in zip(clean.epochs, resumed.epochs, strict=True):
        assert b.validation_loss == pytest.approx(a.validation_loss, rel=1e-3)
    assert clean.epochs[1].train_loss < clean.epochs[0].train_loss
    assert clean.best_checkpoint is not None and resumed.best_checkpoint is not None
    assert resumed.best_checkpoint.epoch == clean.best_checkpoint.epoch
    assert_checkpoint_generates(Path(resumed.best_checkpoint.uri))
    assert_schedule(clean)
    assert [p.learning_rate for p in resumed.steps] == [p.learning_rate for p in clean.steps]
    epoch_one = clean.epochs[0].step
    [point] = resumed.resumes
    assert (point.saved_by, point.epoch, point.step) == ("EpochEnd", 1, epoch_one)
    redone = clean_steps[epoch_one : epoch_one + 1]  # epoch 2's first step, trained twice
    assert step_log(log) == clean_steps[: epoch_one + 1] + clean_steps[epoch_one:]
    assert [s for _, s, _ in redone] == [epoch_one + 1]
    assert_storage_left(Path(resumed.best_checkpoint.uri).parents[1], resumed)


def assert_storage_left(run_root: Path, report) -> None:
    """What a finished run leaves in its folder: each kept epoch's model (committed), the
    stage's per-step series and final state; no resume state, nothing half-written."""
    stage = report.epochs[0].stage
    kept = sorted(Path(e.checkpoint).name for e in report.epochs if e.checkpoint)
    assert sorted(p.name for p in run_root.iterdir()) == [stage]
    assert sorted(p.name for p in (run_root / stage).iterdir()) == [
        *kept,
        "stage.json",
        "steps.jsonl",
    ]
    for name in kept:
        assert (run_root / stage / name / "kubetune-commit.json").is_file()
        assert (run_root / stage / name / "model.safetensors").is_file()


def test_a_preempted_run_resumes_on_a_fresh_cluster_from_s3_losing_no_step(
    clean_run, tmp_path, datasets_dir, monkeypatch, s3_storage
):
    """Spot reclaim of a worker at step k with no retry left in the cluster: the preStop hook's
    notice becomes a save of that step by all ranks to a real S3-compatible server, and the
    attempt fails. A second attempt on a fresh Ray cluster, reading only that storage, goes on
    from the very step: every optimizer step of the clean run is trained exactly once, on the
    same data, and the run ends with the same best epoch."""
    import ray

    from kubetune_trainer import durable
    from kubetune_trainer import storage as stores

    clean, clean_steps = clean_run
    ray.shutdown()  # the next Ray starts with the S3 server's environment
    marker, log = tmp_path / "preempted", tmp_path / "steps.jsonl"
    fault = {
        "mode": "preempt",
        "rank": 1,
        "epoch": 2,
        "step": 3,
        "marker": str(marker),
        "stepLog": str(log),
        "scratch": str(tmp_path / "scratch"),
    }
    (tmp_path / "scratch").mkdir()
    monkeypatch.setenv("KUBETUNE_FAULT_INJECT", json.dumps(fault))
    monkeypatch.setenv("KUBETUNE_MAX_FAILURES", "0")
    spec = deepspeed_spec(datasets_dir, tmp_path / "unused")
    spec.output.storage_uri = s3_storage
    with pytest.raises(Exception, match="preempted"):
        run_spec(spec, tmp_path / "attempt-1", "ds-preempt", job_uid="job-1234")
    assert marker.exists(), "the preemption was never injected"
    stage_uri = stores.join(s3_storage, "job-1234", clean.epochs[0].stage)
    saved = durable.latest_resume_point(stage_uri)
    assert saved is not None and "Preemption" in stores.read_text(
        stores.join(saved, durable.COMMIT)
    )

    ray.shutdown()  # attempt 2: a fresh cluster; only the storage carries over
    resumed = run_spec(spec, tmp_path / "attempt-2", "ds-preempt", job_uid="job-1234")

    assert resumed.phase == "Succeeded"
    assert step_log(log) == clean_steps  # no step lost, none repeated, the same data order
    epoch_one = clean.epochs[0].step
    [point] = resumed.resumes
    assert (point.saved_by, point.epoch, point.step) == ("Preemption", 1, epoch_one + 2)
    assert [e.epoch for e in resumed.epochs] == [1, 2]
    for a, b in zip(clean.epochs, resumed.epochs, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-3)
        assert b.validation_loss == pytest.approx(a.validation_loss, rel=1e-3)
    assert resumed.best_checkpoint is not None and clean.best_checkpoint is not None
    assert resumed.best_checkpoint.epoch == clean.best_checkpoint.epoch
    assert resumed.best_checkpoint.uri.startswith(stores.join(s3_storage, "job-1234") + "/")
    assert durable.committed(resumed.best_checkpoint.uri)
    assert durable.resume_points(stage_uri) == []  # the finished stage keeps no resume state
    ray.shutdown()  # later tests get a Ray without this test's environment


def assert_schedule(report) -> None:
    """Every planned step ran, each at the planned learning rate: no step at 0 (DeepSpeed's
    WarmupLR ran the first two there), the last one at the end of the linear decay."""
    from kubetune_trainer.metrics import lr_multiplier

    total = report.total_steps
    assert report.step == total > 2
    assert [p.step for p in report.steps] == list(range(1, total + 1))
    planned = [
        TRAINING["learningRate"] * lr_multiplier(k, total, 0, "linear") for k in range(total)
    ]
    assert [p.learning_rate for p in report.steps] == pytest.approx(planned, rel=1e-6)
    assert min(p.learning_rate for p in report.steps) > 0
