"""Masking, over-length drops, packing without cross-example attention, per-epoch shuffle."""

from __future__ import annotations

import pytest
import torch

from kubetune_trainer.data.presets import make_preset
from kubetune_trainer.data.tokenization import (
    IGNORE_INDEX,
    Example,
    collate_packed,
    collate_padded,
    encode_pair,
    model_inputs,
    pack_examples,
    shuffled,
    token_loss_sum,
    worker_batches,
)

pytestmark = pytest.mark.unit


def _examples(tokenizer, rows, count=12):
    preset = make_preset("gsm8k")
    out = []
    for number, row in enumerate(rows[:count], start=1):
        ids, labels = encode_pair(tokenizer, *preset(row))
        out.append(Example(number, tuple(ids), tuple(labels)))
    return out


def test_loss_only_on_completion_and_stop_token_kept(tiny_tokenizer, gsm8k_rows):
    prompt, completion = make_preset("gsm8k")(gsm8k_rows[0])
    ids, labels = encode_pair(tiny_tokenizer, prompt, completion)
    n_prompt = len(tiny_tokenizer.encode(prompt, add_special_tokens=False)) + 1
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == labels[-1] == tiny_tokenizer.convert_tokens_to_ids("<END_A>")
    with_prompt = encode_pair(tiny_tokenizer, prompt, completion, loss_on_prompt=True)[1]
    assert with_prompt[0] == IGNORE_INDEX and with_prompt[1:] == ids[1:]


def test_padding_never_carries_loss():
    batch = collate_padded([Example(1, (5, 6, 7), (-100, 6, 7)), Example(2, (5, 6), (-100, 6))], 0)
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 6, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_packing_fills_sequences_in_order_and_rejects_overlong():
    examples = [Example(i, (1,) * n, (1,) * n) for i, n in enumerate([4, 3, 3, 5, 1], start=1)]
    assert [[e.row for e in b] for b in pack_examples(examples, 8)] == [[1, 2], [3, 4], [5]]
    with pytest.raises(ValueError, match="row 9"):
        pack_examples([Example(9, (1,) * 9, (1,) * 9)], 8)


def test_packed_mask_is_block_diagonal_and_positions_restart():
    batch = collate_packed([[Example(1, (5, 6), (-100, 6)), Example(2, (7, 8, 9), (7, 8, 9))]], 0)
    mask = batch["attention_mask"][0, 0]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2]]
    assert not mask[2:, :2].any() and mask[4, 2:].all() and not mask[2, 3]
    assert batch["labels"].tolist() == [[-100, 6, -100, 8, 9]]


def test_packed_loss_equals_unpacked_loss(tiny_model_dir, tiny_tokenizer, gsm8k_rows):
    from kubetune_trainer.model import load_model, resize_for_tokenizer

    model = load_model(str(tiny_model_dir))
    resize_for_tokenizer(model, tiny_tokenizer)
    model.eval()
    examples = _examples(tiny_tokenizer, gsm8k_rows, count=8)
    pad = tiny_tokenizer.pad_token_id
    with torch.no_grad():
        unpacked = collate_padded(examples, pad)
        loss_u, n_u = token_loss_sum(
            model(**model_inputs(unpacked, model)).logits, unpacked["labels"]
        )
        packed = collate_packed(pack_examples(examples, 512), pad)
        assert packed["input_ids"].shape[0] < len(examples)
        loss_p, n_p = token_loss_sum(model(**model_inputs(packed, model)).logits, packed["labels"])
    assert n_u == n_p
    assert loss_p / n_p == pytest.approx(float(loss_u / n_u), rel=1e-4)


def test_shuffle_changes_every_epoch_and_is_reproducible():
    examples = [Example(i, (i,), (i,)) for i in range(50)]
    assert shuffled(examples, 1, 0) == shuffled(examples, 1, 0)
    assert shuffled(examples, 1, 0) != shuffled(examples, 1, 1)


def test_workers_get_equal_batches_and_every_example_once():
    examples = [Example(i, (i + 1,) * 3, (i + 1,) * 3) for i in range(7)]
    seen = []
    counts = []
    for rank in range(2):
        batches = worker_batches(
            examples,
            epoch=0,
            seed=0,
            rank=rank,
            world_size=2,
            batch_size=2,
            context_length=4,
            packing=False,
            pad_id=0,
        )
        counts.append(len(batches))
        for batch in batches:
            pairs = zip(batch["input_ids"], batch["labels"], strict=True)
            seen += [int(ids[0]) for ids, labels in pairs if labels[0] != IGNORE_INDEX]
    assert counts == [2, 2] and sorted(seen) == list(range(1, 8))
