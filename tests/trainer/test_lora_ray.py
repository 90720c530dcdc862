"""A LoRA run (`training.method: lora`, peft) for real: `kubetune run` on a local Ray, DDP on 2
CPU workers, tiny Llama, real GSM8k rows.

LoRA checkpoints are saved merged (train_loop.save_consolidated): an ordinary HF checkpoint of
the full model. So only the adapters' target modules may differ from the base model there; every
other weight (norms, MLP, the original embedding and lm_head rows) must be the base's, bit for
bit, and the merged checkpoint must reload with transformers and generate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer.test_training_ray import TRAINING, assert_checkpoint_generates, run_to_success

pytestmark = pytest.mark.trainer

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # LoraSpec's default target_modules
RESIZED = ("model.embed_tokens.weight", "lm_head.weight")  # grown for the task's special tokens


def lora_manifest(datasets: Path) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "lora-test"},
        "spec": {
            "model": {"name": "builtin:tiny-llama"},
            "task": {"preset": "gsm8k"},
            "data": {"train": {"uri": str(datasets / "gsm8k" / "train.jsonl")}, "maxSamples": 48},
            "training": {
                **TRAINING,
                "learningRate": 5.0e-3,
                "epochs": 2,
                "checkpointsToKeep": 2,
                "method": "lora",  # LoraSpec defaults: r 8, alpha 16, dropout 0.05
                "deepspeed": {"enabled": False, "offloadOptimizer": False},
            },
            "evaluation": {"enabled": False},
            "compute": {"workers": 2},
            "output": {"storageURI": "checkpoints"},  # relative to the manifest's folder
        },
    }


def safetensors_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no safetensors in {folder}"
    weights: dict = {}
    for file in files:
        weights.update(load_file(str(file)))
    return weights


def test_lora_ddp_run_trains_only_adapters_and_merged_checkpoint_generates(tmp_path, datasets_dir):
    import torch

    status, output = run_to_success(tmp_path, lora_manifest(datasets_dir))
    assert [e["epoch"] for e in status["epochs"]] == [1, 2]
    first, second = status["epochs"]
    assert second["trainLoss"] < first["trainLoss"]
    best = status["bestCheckpoint"]
    assert best["epoch"] in (1, 2)
    assert Path(best["uri"]).parent == tmp_path / "checkpoints" / "gsm8k"
    metrics = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [m["type"] for m in metrics if m["type"] != "step"] == ["epoch", "epoch"]
    assert [m["step"] for m in metrics if m["type"] == "step"][-1] == status["progress"]["step"]

    folder = Path(best["uri"])
    # merged: a plain model checkpoint, no peft adapter files and no peft-prefixed weights
    assert not (folder / "adapter_config.json").exists()
    merged = safetensors_weights(folder)
    assert not [k for k in merged if "lora_" in k or "base_layer" in k or "base_model" in k]

    base_folder = output / "work" / "tiny-llama"  # the builtin model the job was built on
    base = safetensors_weights(base_folder)
    assert set(merged) == set(base)
    changed, unchanged = [], []
    for name, weight in base.items():
        trained = merged[name]
        if name in RESIZED:
            assert trained.shape[0] > weight.shape[0], name  # special tokens were added
            trained = trained[: weight.shape[0]]
        assert trained.shape == weight.shape, name
        is_target = any(f".{t}." in name for t in TARGETS)
        if is_target:
            (unchanged if torch.equal(trained, weight) else changed).append(name)
        else:
            assert torch.equal(trained, weight), f"{name} is not a LoRA target but was trained"
    targets = [n for n in base if any(f".{t}." in n for t in TARGETS)]
    assert len(targets) == 2 * len(TARGETS)  # tiny Llama: 2 layers
    assert unchanged == [], f"LoRA target weights left at the base model's: {unchanged}"
    assert sorted(changed) == sorted(targets)

    # every kept epoch checkpoint is merged alike; the later one moved further from the base
    epoch_dirs = sorted((tmp_path / "checkpoints" / "gsm8k").glob("epoch-*"))
    assert [d.name for d in epoch_dirs] == ["epoch-001", "epoch-002"]
    per_epoch = [safetensors_weights(d) for d in epoch_dirs]
    name = targets[0]
    distances = [float((w[name] - base[name]).norm()) for w in per_epoch]
    assert 0 < distances[0] != distances[1]
    for name in RESIZED:  # frozen, the special tokens' new rows included
        assert torch.equal(per_epoch[0][name], per_epoch[1][name]), name
    # ...and each merged checkpoint IS the trained model: it scores the validation loss the
    # workers reported for that epoch (a wrong merge, e.g. a lost alpha/r scaling, would not)
    spec = lora_manifest(datasets_dir)["spec"]
    for epoch_dir, point in zip(epoch_dirs, status["epochs"], strict=True):
        loss = checkpoint_validation_loss(epoch_dir, spec)
        assert loss == pytest.approx(point["validationLoss"], rel=1e-4), epoch_dir.name

    assert_checkpoint_generates(folder)


def checkpoint_validation_loss(folder: Path, raw_spec: dict) -> float:
    """The token-weighted validation loss of a saved checkpoint, on the job's own split."""
    import torch

    from kubetune.validation import parse_spec
    from kubetune_trainer.data.prepare import prepare_data
    from kubetune_trainer.data.presets import preset_for_task
    from kubetune_trainer.data.tokenization import model_inputs, token_loss_sum, worker_batches
    from kubetune_trainer.model import load_model, load_tokenizer

    spec = parse_spec(raw_spec)
    t = spec.training
    tokenizer = load_tokenizer(str(folder))
    prepared = prepare_data(
        spec.data,
        preset_for_task(spec.task),
        tokenizer,
        context_length=t.context_length,
        seed=t.seed,
        loss_on_prompt=t.loss_on_prompt,
    )
    assert prepared.validation
    model = load_model(str(folder)).eval()
    loss_sum, tokens = 0.0, 0
    with torch.no_grad():
        for batch in worker_batches(
            prepared.validation,
            epoch=0,
            seed=t.seed,
            rank=0,
            world_size=1,
            batch_size=t.batch_size_per_device,
            context_length=t.context_length,
            packing=t.packing,
            pad_id=tokenizer.pad_token_id,
            shuffle=False,
        ):
            total, count = token_loss_sum(
                model(**model_inputs(batch, model)).logits, batch["labels"]
            )
            loss_sum, tokens = loss_sum + float(total), tokens + int(count)
    return loss_sum / tokens
