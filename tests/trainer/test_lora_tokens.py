"""LoRA trains the special tokens' rows of the input embedding and of the untied output head,
so a LoRA model learns to end its answers with the stop token (in one process, tiny Llama)."""

from __future__ import annotations

import pytest
import torch

from kubetune.api.tasks import QA_TOKENS
from kubetune.api.v1alpha1 import TrainingSpec
from kubetune_trainer.data.tokenization import (
    Example,
    collate_padded,
    encode_pair,
    model_inputs,
    prompt_ids,
    token_loss_sum,
)
from kubetune_trainer.train_loop import apply_lora, trainable_token_rows

pytestmark = pytest.mark.trainer

LORA = TrainingSpec.model_validate(
    {
        "method": "lora",
        "gradientCheckpointing": False,
        "deepspeed": {"enabled": False, "offloadOptimizer": False},
    }
)
PAIRS = [
    (f"<START_Q>{a} plus {b}?<END_Q><START_A>", f"{a + b}<END_A>")
    for a, b in [(1, 2), (3, 4), (5, 1), (2, 2), (7, 1), (4, 4), (6, 3), (9, 0)]
]


def lora_model(tiny_model_dir, tokenizer, token_rows: bool):
    from kubetune_trainer.model import load_model, resize_for_tokenizer

    torch.manual_seed(0)
    model = load_model(str(tiny_model_dir), dtype=torch.float32)
    assert not model.config.tie_word_embeddings  # like Llama-2: the head has rows of its own
    base_rows = model.get_input_embeddings().weight.shape[0]
    resize_for_tokenizer(model, tokenizer)
    rows = trainable_token_rows(tokenizer, QA_TOKENS, base_rows) if token_rows else []
    return apply_lora(model, LORA, rows), rows


def train(model, tokenizer, steps: int = 80) -> None:
    examples = [
        Example(i, tuple(ids), tuple(labels))
        for i, (ids, labels) in enumerate((encode_pair(tokenizer, p, c) for p, c in PAIRS), 1)
    ]
    batch = collate_padded(examples, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    for _ in range(steps):
        loss_sum, count = token_loss_sum(
            model(**model_inputs(batch, model)).logits, batch["labels"]
        )
        (loss_sum / count).backward()
        optimizer.step()
        optimizer.zero_grad()


def generated_ids(model, tokenizer, prompt: str, stop: int) -> list[int]:
    model.eval()
    ids = torch.tensor([prompt_ids(tokenizer, prompt)])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=[stop],
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


def test_lora_trains_the_stop_token_rows_and_learns_to_stop(tiny_model_dir, tiny_tokenizer):
    stop = tiny_tokenizer.convert_tokens_to_ids("<END_A>")
    model, rows = lora_model(tiny_model_dir, tiny_tokenizer, token_rows=True)
    assert stop in rows
    head = model.get_output_embeddings()
    before = {
        "embedding": model.get_input_embeddings()(torch.tensor([stop])).detach().clone(),
        "head": head(torch.eye(model.config.hidden_size)).detach()[:, stop].clone(),
    }
    train(model, tiny_tokenizer)
    after = {
        "embedding": model.get_input_embeddings()(torch.tensor([stop])).detach(),
        "head": head(torch.eye(model.config.hidden_size)).detach()[:, stop],
    }
    for name in before:
        assert not torch.allclose(before[name], after[name]), f"the stop token's {name} row froze"
    for prompt, _ in PAIRS[:3]:
        new = generated_ids(model, tiny_tokenizer, prompt, stop)
        assert stop in new, (prompt, tiny_tokenizer.decode(new))


def test_without_its_rows_a_lora_model_never_ends_with_the_stop_token(
    tiny_model_dir, tiny_tokenizer
):
    """The control: what LoRA without trainable token rows (the previous default) does."""
    stop = tiny_tokenizer.convert_tokens_to_ids("<END_A>")
    model, _ = lora_model(tiny_model_dir, tiny_tokenizer, token_rows=False)
    train(model, tiny_tokenizer)
    stopped = [stop in generated_ids(model, tiny_tokenizer, p, stop) for p, _ in PAIRS[:3]]
    assert not any(stopped)
