"""Evaluation of a checkpoint: batched greedy generation that stops at the stop token, then
the task's scorer (`kubetune_trainer.tasks.<task>`, through `evaluation.scoring`).

The baseline (evaluation.baseline) evaluates the base model with a few-shot prompt of worked
examples from the training rows in plain text ("Question: ... Answer: ..."), and stops it at a
blank line: an untuned model has never seen the special tokens, so it would neither read that
layout nor ever emit the stop token (every answer would run to maxNewTokens).

Decoding is greedy whatever the checkpoint says: the model's generation config is replaced,
because transformers fills unset values of any config passed to generate() from the
checkpoint's generation_config.json (a repetition penalty there would change every answer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kubetune_trainer.data.prepare import TestRow
from kubetune_trainer.data.tokenization import prompt_ids
from kubetune_trainer.tasks import task as task_of


def left_padded(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def cut_at_stop(ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    out = []
    for token in ids:
        if token in stop_ids:
            break
        out.append(int(token))
    return out


@dataclass
class Endings:
    """How generations ended: with a stop token, or cut at maxNewTokens without one."""

    stopped: int = 0
    truncated: int = 0
    total: int = 0

    def add(self, new_ids: Sequence[int], stop_ids: Sequence[int], max_new_tokens: int) -> None:
        kept = cut_at_stop(new_ids, stop_ids)
        stopped = len(kept) < len(new_ids) and new_ids[len(kept)] in stop_ids
        self.record(stopped, len(kept), max_new_tokens)

    def record(self, stopped: bool, length: int, max_new_tokens: int) -> None:
        self.total += 1
        if stopped:
            self.stopped += 1
        elif length >= max_new_tokens:
            self.truncated += 1

    def metrics(self) -> dict[str, float]:
        total = max(self.total, 1)
        return {"stop_token_rate": self.stopped / total, "truncated_rate": self.truncated / total}


def greedy_config(
    tokenizer: Any, stop_ids: list[int], max_new_tokens: int, stop_text: str | None
) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
        stop_strings=[stop_text] if stop_text else None,
    )


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    stop_token: str,
    *,
    batch_size: int,
    max_new_tokens: int,
    prefix: str = "",
    endings: Endings | None = None,
    stop_text: str | None = None,
    on_batch: Callable[[int, int], Any] | None = None,
) -> list[str]:
    """Greedy completions of `prompts` (same BOS + prompt prefix as in training), each ending
    at `stop_token` or, when `stop_text` is given (the plain-text baseline), at that text;
    `endings`, when given, counts how each one ended."""
    stop_ids = [] if stop_text else [tokenizer.convert_tokens_to_ids(stop_token)]
    if tokenizer.eos_token_id is not None:
        stop_ids.append(tokenizer.eos_token_id)
    device = next(model.parameters()).device
    model.eval()
    model.generation_config = greedy_config(tokenizer, stop_ids, max_new_tokens, stop_text)
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [prompt_ids(tokenizer, prefix + p) for p in prompts[start : start + batch_size]]
        ids, mask = left_padded(chunk, tokenizer.pad_token_id)
        generated = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), tokenizer=tokenizer
        )
        for row in generated[:, ids.shape[1] :].tolist():
            outputs.append(decoded(tokenizer, row, stop_ids, stop_text, max_new_tokens, endings))
        if on_batch is not None:
            on_batch(len(outputs), len(prompts))
    return outputs


def decoded(
    tokenizer: Any,
    row: list[int],
    stop_ids: list[int],
    stop_text: str | None,
    max_new_tokens: int,
    endings: Endings | None,
) -> str:
    kept = cut_at_stop(row, stop_ids)
    text = tokenizer.decode(kept, skip_special_tokens=True)
    if stop_text is None:
        if endings is not None:
            endings.add(row, stop_ids, max_new_tokens)
        return str(text).strip()
    text, found, _ = text.partition(stop_text)
    if endings is not None:
        endings.record(bool(found), len(kept), max_new_tokens)
    return str(text).strip()


def score(
    task: str, predictions: Sequence[str], rows: Sequence[TestRow]
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics and per-example verdicts for the task (its module's scorer)."""
    from kubetune_trainer.evaluation.scoring import score_predictions

    references = [task_of(task).reference(r.fields, r.completion) for r in rows]
    metrics, details = score_predictions(
        task, list(predictions), references, ids=[r.row for r in rows]
    )
    return dict(metrics), list(details)


def few_shot_prefix(examples: Sequence[tuple[str, str]]) -> str:
    """Worked plain-text (prompt, completion) pairs (`Preset.plain`, each completion ending in
    its blank line) placed before the question for the baseline."""
    return "".join(prompt + completion for prompt, completion in examples)


def evaluate_model(
    model_path: str,
    task: str,
    rows: Sequence[TestRow],
    stop_token: str,
    **options: Any,
) -> dict[str, Any]:
    """Load a checkpoint (a local path, s3://, gs://, pvc:// or file:// URI, or a hub id for the baseline),
    generate for every row and score. Runs as a Ray task, possibly on another node, so remote
    checkpoints are fetched here, not by the driver. `options` are `_evaluate_loaded`'s:
    batch_size, max_new_tokens, revision, few_shot, special_tokens, prompts, stop_text,
    devices, counter."""
    from kubetune_trainer import storage
    from kubetune_trainer.data.loaders import resolve_local

    if storage.is_storage_uri(model_path) and not storage.is_remote(model_path):
        model_path = resolve_local(model_path)  # pvc:// and file:// are mounted folders
    if not storage.is_remote(model_path):
        return _evaluate_loaded(model_path, task, rows, stop_token, **options)
    # Staged on the pod's scratch volume and removed afterwards (a 13B checkpoint is 26 GB).
    with storage.staging_dir("ckpt-") as tmp:
        local = storage.download_dir(model_path, Path(tmp))
        return _evaluate_loaded(str(local), task, rows, stop_token, **options)


def _evaluate_loaded(
    model_path: str,
    task: str,
    rows: Sequence[TestRow],
    stop_token: str,
    *,
    batch_size: int,
    max_new_tokens: int,
    revision: str | None = None,
    few_shot: Sequence[tuple[str, str]] = (),
    special_tokens: Sequence[str] = (),
    prompts: Sequence[str] | None = None,
    stop_text: str | None = None,
    devices: int = 1,
    counter: Any = None,
) -> dict[str, Any]:
    from kubetune_trainer.model import add_special_tokens, load_model, load_tokenizer

    tokenizer = load_tokenizer(model_path, revision)
    add_special_tokens(tokenizer, special_tokens)
    # A model larger than one GPU is split by layers over the `devices` GPUs Ray gave this
    # task (the plan's count: kubetune.planning.generation_devices).
    split = torch.cuda.is_available() and devices > 1
    model = load_model(
        model_path,
        revision,
        torch.float32 if not torch.cuda.is_available() else torch.bfloat16,
        device_map="auto" if split else None,
    )
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    if torch.cuda.is_available() and not split:
        model = model.cuda()
    endings = Endings()
    predictions = generate(
        model,
        tokenizer,
        list(prompts) if prompts is not None else [r.prompt for r in rows],
        stop_token,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        prefix=few_shot_prefix(few_shot),
        endings=endings,
        stop_text=stop_text,
        # A Ray actor (runner.BatchCounter): the driver turns its count into heartbeats.
        on_batch=None if counter is None else lambda done, total: counter.batch.remote(done, total),
    )
    metrics, details = score(task, predictions, rows)
    metrics = {**metrics, **endings.metrics()}
    return {"metrics": metrics, "details": details, "predictions": predictions}
