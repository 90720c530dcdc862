"""A LoRA run (`training.method: lora`, peft) for real: `kubetune run` on a local Ray, DDP on 2
CPU workers, tiny Llama, real GSM8k rows.

Each epoch saves the adapter only (LoRA weights and the trained special-token rows); the
stage's best is merged once after training into an ordinary HF checkpoint beside it, which is
what `status.bestCheckpoint` names. In the merged checkpoint only the adapters' target modules
and the special tokens' rows of the embedding and of the (untied) head may differ from the base
model; every other weight must be the base's, bit for bit, and it must reload and generate.
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


def test_lora_ddp_run_saves_adapters_and_merges_the_best_once(tmp_path, datasets_dir):
    import torch

    status, output = run_to_success(tmp_path, lora_manifest(datasets_dir))
    assert [e["epoch"] for e in status["epochs"]] == [1, 2]
    first, second = status["epochs"]
    assert second["trainLoss"] < first["trainLoss"]
    metrics = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [m["type"] for m in metrics if m["type"] != "step"] == ["epoch", "epoch"]
    assert [m["step"] for m in metrics if m["type"] == "step"][-1] == status["progress"]["step"]

    stage_dir = Path(status["outputURI"]) / "gsm8k"
    assert stage_dir.parent.parent == tmp_path / "checkpoints"
    best = status["bestCheckpoint"]
    folder = Path(best["uri"])
    assert folder == stage_dir / f"epoch-{best['epoch']:03d}-merged"
    assert sorted(d.name for d in stage_dir.iterdir() if d.is_dir()) == sorted(
        ["epoch-001", "epoch-002", folder.name]
    )  # one merge: the best epoch's

    base = safetensors_weights(output / "work" / "tiny-llama")  # the builtin base model
    adapters = [safetensors_weights(stage_dir / f"epoch-{e:03d}") for e in (1, 2)]
    for adapter in adapters:  # adapter-only: LoRA matrices and token rows, no full matrices
        assert adapter and all("lora_" in k or "trainable_tokens" in k for k in adapter), list(
            adapter
        )
        assert sum(w.numel() for w in adapter.values()) < 0.2 * sum(
            w.numel() for w in base.values()
        )
    token_rows = [k for k in adapters[0] if "trainable_tokens" in k]
    assert len(token_rows) == 2  # embedding and head
    for name in token_rows:  # the special tokens' rows are trained, epoch after epoch
        assert not torch.equal(adapters[0][name], adapters[1][name]), name

    merged = safetensors_weights(folder)
    assert not (folder / "adapter_config.json").exists()
    assert not [k for k in merged if "lora_" in k or "base_layer" in k or "base_model" in k]
    assert set(merged) == set(base)
    changed = []
    for name, weight in base.items():
        trained = merged[name]
        if name in RESIZED:
            assert trained.shape[0] == weight.shape[0] + 4, name  # the task's 4 tokens
            new_rows = trained[weight.shape[0] :]
            [delta] = [w for k, w in adapters[best["epoch"] - 1].items() if _row_key(name) in k]
            assert torch.equal(new_rows, delta.to(new_rows.dtype)), name  # the trained rows
            trained = trained[: weight.shape[0]]
            assert torch.equal(trained, weight), f"{name}: the base's own rows changed"
            continue
        if any(f".{t}." in name for t in TARGETS):
            changed.append(name) if not torch.equal(trained, weight) else None
        else:
            assert torch.equal(trained, weight), f"{name} is not a LoRA target but was trained"
    targets = [n for n in base if any(f".{t}." in n for t in TARGETS)]
    assert len(targets) == 2 * len(TARGETS)  # tiny Llama: 2 layers
    assert sorted(changed) == sorted(targets)

    # the merged checkpoint IS the trained model: it scores the validation loss the workers
    # reported for its epoch (a wrong merge, e.g. a lost alpha/r scaling, would not)
    spec = lora_manifest(datasets_dir)["spec"]
    loss = checkpoint_validation_loss(folder, spec)
    assert loss == pytest.approx(status["epochs"][best["epoch"] - 1]["validationLoss"], rel=1e-4)
    assert_checkpoint_generates(folder)


def _row_key(weight_name: str) -> str:
    return "embed_tokens" if "embed_tokens" in weight_name else "lm_head"


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
