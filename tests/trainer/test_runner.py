"""The driver's stage sequencing without Ray: each stage starts from the previous best."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from kubetune.validation import parse_spec
from kubetune_trainer import runner
from kubetune_trainer.checkpoints import CheckpointRecord
from kubetune_trainer.reporting import ThrottledReporter
from kubetune_trainer.train_loop import StageState

pytestmark = pytest.mark.unit


class Recorder:
    def __init__(self):
        self.phases = []
        self.beats = []

    def write(self, report):
        self.phases.append(report.phase)
        if report.heartbeat is not None:
            self.beats.append(report.heartbeat.activity)


def test_stages_chain_from_the_previous_best_checkpoint(tmp_path, datasets_dir, monkeypatch):
    seen = []

    def fake_fit(config, workers, run_name, ray_storage):
        seen.append((config.stage, config.model_source, config.training.epochs, workers))
        ppls = [5.0, 3.0, 4.0][: config.training.epochs]
        records = [
            CheckpointRecord(config.stage, e, f"{config.storage_uri}/{config.stage}/e{e}", p)
            for e, p in enumerate(ppls, start=1)
        ]
        epochs = [
            {
                "stage": config.stage,
                "epoch": r.epoch,
                "trainLoss": 1.0,
                "validationLoss": 1.0,
                "validationPerplexity": r.validation_perplexity,
            }
            for r in records
        ]
        return StageState(
            epoch=len(ppls), step=len(ppls), epochs=epochs, records=[asdict(r) for r in records]
        )

    monkeypatch.setattr(runner, "init_ray", lambda local: None)
    monkeypatch.setattr(runner, "cluster_has_gpus", lambda: False)
    monkeypatch.setattr(runner, "fit_stage", fake_fit)
    spec = parse_spec(
        {
            "model": {"name": "builtin:tiny-llama"},
            "task": {"preset": "gsm8k"},
            "stages": [
                {
                    "name": "mathqa",
                    "task": {"preset": "mathqa"},
                    "training": {"epochs": 3},
                    "data": {
                        "train": {"uri": str(datasets_dir / "mathqa" / "challenge_test.json")}
                    },
                },
                {
                    "name": "gsm8k",
                    "training": {"epochs": 2, "learningRate": 1e-4},
                    "data": {"train": {"uri": str(datasets_dir / "gsm8k" / "test.jsonl")}},
                },
            ],
            "evaluation": {"enabled": False},
            "compute": {"workers": 3},
            "output": {"storageURI": str(tmp_path / "ck")},
        }
    )
    recorder = Recorder()
    report = runner.run_job(
        spec,
        runner.RunOptions(
            job_name="j",
            reporter=ThrottledReporter(recorder, 0),
            workdir=tmp_path / "w",
            local=True,
        ),
    )

    assert [s[0] for s in seen] == ["mathqa", "gsm8k"]
    assert seen[0][1]["kind"] == "files" and seen[0][2:] == (3, 3)
    assert seen[1][1]["kind"] == "storage"
    assert seen[1][2] == 2
    assert report.phase == "Succeeded" and report.best_checkpoint.stage == "gsm8k"
    assert report.best_checkpoint.epoch == 2
    assert [(e.stage, e.epoch) for e in report.epochs] == [
        ("mathqa", 1),
        ("mathqa", 2),
        ("mathqa", 3),
        ("gsm8k", 1),
        ("gsm8k", 2),
    ]
    assert recorder.phases[0] == "Preparing" and recorder.phases[-1] == "Succeeded"
    assert "Training" in recorder.phases
    # The driver's own writes carry fresh heartbeats (the workers beat on their copy): an
    # old one at a stage's end would look like a stall.
    assert recorder.beats == [
        "starting stage mathqa",
        "finished stage mathqa",
        "starting stage gsm8k",
        "finished stage gsm8k",
        "finished stage gsm8k",
    ]

    # The run wrote under a folder of its own: a second run on the same storage gets another.
    run_root = tmp_path / "ck" / str(report.job_uid)
    assert report.job_uid is not None and report.job_uid.startswith("run-")
    assert {s[1].get("uri") for s in seen[1:]} == {f"{run_root}/mathqa/e2"}
    second = runner.run_job(
        spec,
        runner.RunOptions(
            job_name="j",
            reporter=ThrottledReporter(Recorder(), 0),
            workdir=tmp_path / "w2",
            local=True,
        ),
    )
    assert second.job_uid != report.job_uid
    assert second.best_checkpoint.uri.startswith(f"{tmp_path / 'ck' / str(second.job_uid)}/")
    assert report.best_checkpoint.uri.startswith(f"{run_root}/")


@pytest.mark.parametrize(
    ("pool", "cluster_gpus", "expected"),
    [
        (
            {"instanceType": "kubetune-local", "gpusPerNode": 0, "cpu": "500m", "memory": "3Gi"},
            False,
            False,
        ),
        (
            {"instanceType": "kubetune-local", "gpusPerNode": 0, "cpu": "500m", "memory": "3Gi"},
            True,
            False,
        ),
        ({"instanceType": "g5.48xlarge"}, True, True),
        ({"instanceType": "g5.48xlarge"}, False, False),  # kubetune run on a CPU machine
    ],
)
def test_gpus_are_used_only_by_gpu_pools_on_clusters_that_have_them(
    monkeypatch, pool, cluster_gpus, expected
):
    monkeypatch.setattr(runner, "cluster_has_gpus", lambda: cluster_gpus)
    spec = parse_spec(
        {
            "model": {"name": "builtin:tiny-llama"},
            "task": {"preset": "gsm8k"},
            "data": {"train": {"uri": "train.jsonl"}},
            "evaluation": {"enabled": False},
            "compute": {"workers": 2, "nodePool": pool},
            "output": {"storageURI": "pvc://c/out"},
        }
    )
    assert runner.use_gpus(spec) is expected
