"""Evaluation of a checkpoint: batched greedy generation that stops at the stop token, then
the task's scorer (`kubetune_trainer.tasks.<task>`, through `evaluation.scoring`).

Generation runs in one process (`generate_for_model`), or spread over several copies of the
model as Ray Data actors (`generate_sharded`, one per worker the job has) that take whole
generation batches: the same batches, so the same greedy text in the same order.

The baseline (evaluation.baseline) evaluates the base model with a few-shot prompt of worked
examples from the training rows in plain text ("Question: ... Answer: ..."), and stops it at a
blank line: an untuned model has never seen the special tokens, so it would neither read that
layout nor ever emit the stop token (every answer would run to maxNewTokens).

Decoding is greedy whatever the checkpoint says: the model's generation config is replaced,
because transformers fills unset values of any config passed to generate() from the
checkpoint's generation_config.json (a repetition penalty there would change every answer).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Mapping, Sequence
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


def stop_token_ids(tokenizer: Any, stop_token: str, stop_text: str | None) -> list[int]:
    """The tokens generation stops at: the stop token (unless a stop text ends the answers
    instead) and EOS."""
    stop_ids = [] if stop_text else [tokenizer.convert_tokens_to_ids(stop_token)]
    if tokenizer.eos_token_id is not None:
        stop_ids.append(tokenizer.eos_token_id)
    return stop_ids


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
    endings: Endings | None = None,
    stop_text: str | None = None,
    on_batch: Callable[[int, int], Any] | None = None,
) -> list[str]:
    """Greedy completions of `prompts` (same BOS + prompt prefix as in training), each ending
    at `stop_token` or, when `stop_text` is given (the plain-text baseline), at that text;
    `endings`, when given, counts how each one ended."""
    stop_ids = stop_token_ids(tokenizer, stop_token, stop_text)
    device = next(model.parameters()).device
    model.eval()
    model.generation_config = greedy_config(tokenizer, stop_ids, max_new_tokens, stop_text)
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
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
    task: str,
    predictions: Sequence[str],
    rows: Sequence[TestRow],
    scorer: Mapping[str, Any] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics and per-example verdicts: the task's own scorer, or the user's (`scorer`, a
    spec.task.scorer on the wire) for the tasks that take one."""
    from kubetune_trainer.evaluation.scoring import score_predictions

    references = [task_of(task).reference(r.fields, r.completion) for r in rows]
    metrics, details = score_predictions(
        task, list(predictions), references, ids=[r.row for r in rows], scorer=scorer
    )
    return dict(metrics), list(details)


@dataclass(frozen=True)
class GenerationOptions:
    """How one model generates: everything but the prompts (picklable: it travels to Ray)."""

    stop_token: str
    batch_size: int
    max_new_tokens: int
    revision: str | None = None
    special_tokens: tuple[str, ...] = ()
    stop_text: str | None = None
    devices: int = 1  # GPUs one copy of the model is split over


def backend_for(options: GenerationOptions) -> str:
    """ "vllm" when vLLM is installed and there is a GPU, for a model that needs no new tokens
    (a fine-tuned checkpoint already has them; vLLM cannot grow a base model's embeddings);
    "transformers" otherwise (always on CPU)."""
    if options.special_tokens or not torch.cuda.is_available():
        return "transformers"
    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


Generator = Callable[[Sequence[str], Endings, Callable[[int, int], Any] | None], list[str]]


def load_generator(model_path: str, options: GenerationOptions) -> Generator:
    """A loaded model as a function (prompts, endings, on_batch) -> texts, from a local path,
    s3://, gs://, pvc://, file:// or a hub id. A remote checkpoint is staged on the pod's
    scratch volume only while it loads (a 13B checkpoint is 26 GB)."""
    from kubetune_trainer import storage
    from kubetune_trainer.data.loaders import resolve_local

    backend = VllmGenerator if backend_for(options) == "vllm" else TransformersGenerator
    if storage.is_storage_uri(model_path) and not storage.is_remote(model_path):
        model_path = resolve_local(model_path)  # pvc:// and file:// are mounted folders
    if not storage.is_remote(model_path):
        return backend(model_path, options)
    with storage.staging_dir("ckpt-") as tmp:
        return backend(str(storage.download_dir(model_path, Path(tmp))), options)


class TransformersGenerator:
    def __init__(self, model_path: str, options: GenerationOptions):
        from kubetune_trainer.model import (
            add_special_tokens,
            load_model,
            load_tokenizer,
            resize_for_tokenizer,
        )

        self.options = options
        self.tokenizer = load_tokenizer(model_path, options.revision)
        add_special_tokens(self.tokenizer, options.special_tokens)
        # A model larger than one GPU is split by layers over the GPUs Ray gave this copy
        # (the plan's count: kubetune.planning.generation_devices).
        split = torch.cuda.is_available() and options.devices > 1
        model = load_model(
            model_path,
            options.revision,
            torch.float32 if not torch.cuda.is_available() else torch.bfloat16,
            device_map="auto" if split else None,
        )
        resize_for_tokenizer(model, self.tokenizer)
        self.model = model.cuda() if torch.cuda.is_available() and not split else model

    def __call__(
        self,
        prompts: Sequence[str],
        endings: Endings,
        on_batch: Callable[[int, int], Any] | None = None,
    ) -> list[str]:
        return generate(
            self.model,
            self.tokenizer,
            prompts,
            self.options.stop_token,
            batch_size=self.options.batch_size,
            max_new_tokens=self.options.max_new_tokens,
            endings=endings,
            stop_text=self.options.stop_text,
            on_batch=on_batch,
        )


class VllmGenerator:
    """The same greedy generation on vLLM (GPU only): fed the same token ids (BOS + prompt)
    and stopped at the same tokens or text."""

    def __init__(self, model_path: str, options: GenerationOptions):
        from vllm import LLM

        from kubetune_trainer.model import load_tokenizer

        self.options = options
        self.tokenizer = load_tokenizer(model_path, options.revision)
        self.llm = LLM(
            model=model_path,
            revision=options.revision,
            tensor_parallel_size=options.devices,
            dtype="bfloat16",
            seed=0,
        )

    def __call__(
        self,
        prompts: Sequence[str],
        endings: Endings,
        on_batch: Callable[[int, int], Any] | None = None,
    ) -> list[str]:
        from vllm import SamplingParams

        how, tokenizer = self.options, self.tokenizer
        params = SamplingParams(
            temperature=0.0,
            max_tokens=how.max_new_tokens,
            stop=[how.stop_text] if how.stop_text else None,
            stop_token_ids=stop_token_ids(tokenizer, how.stop_token, how.stop_text),
            skip_special_tokens=True,
        )
        outputs: list[str] = []
        for start in range(0, len(prompts), how.batch_size):
            chunk = prompts[start : start + how.batch_size]
            inputs = [{"prompt_token_ids": prompt_ids(tokenizer, p)} for p in chunk]
            for result in self.llm.generate(inputs, params, use_tqdm=False):
                out = result.outputs[0]
                endings.record(out.finish_reason == "stop", len(out.token_ids), how.max_new_tokens)
                outputs.append(str(out.text).strip())
            if on_batch is not None:
                on_batch(len(outputs), len(prompts))
        return outputs


def generate_for_model(
    model_path: str, prompts: Sequence[str], options: GenerationOptions, counter: Any = None
) -> dict[str, Any]:
    """Load a model and generate for every prompt in this process: {"predictions",
    "endings"}. Runs as one Ray task, possibly on another node (remote checkpoints are
    fetched here, not by the driver); `counter` (runner.BatchCounter) hears of each batch."""
    endings = Endings()
    predictions = load_generator(model_path, options)(
        prompts,
        endings,
        None if counter is None else lambda done, total: counter.batch.remote(done, total),
    )
    return {"predictions": predictions, "endings": endings}


class ShardGenerator:
    """A Ray Data actor: one copy of the model, generating whole batches of prompts (the same
    batches as one process would, so the greedy text is the same)."""

    def __init__(self, model_path: str, options: GenerationOptions, counter: Any, total: int):
        self.generate = load_generator(model_path, options)
        self.counter, self.total = counter, total

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, list[Any]] = {"index": [], "predictions": [], "endings": []}
        for index, prompts in zip(batch["index"], batch["prompts"], strict=True):
            endings = Endings()
            predictions = self.generate(json.loads(prompts), endings, None)
            out["index"].append(int(index))
            out["predictions"].append(json.dumps(predictions))
            out["endings"].append(json.dumps([endings.stopped, endings.truncated, endings.total]))
            if self.counter is not None:
                self.counter.add.remote(len(predictions), self.total)
        return out


def generate_sharded(
    model_path: str,
    prompts: Sequence[str],
    options: GenerationOptions,
    *,
    actors: int,
    gpus: bool,
    counter: Any = None,
) -> dict[str, Any]:
    """`generate_for_model`'s result from `actors` copies of the model (Ray Data actors, each
    on `options.devices` GPUs when `gpus`, else one CPU). Work is handed out a generation
    batch at a time, so a slow copy takes fewer; results come back in prompt order."""
    import ray.data

    size = options.batch_size
    batches = [
        {"index": i, "prompts": json.dumps(list(prompts[start : start + size]))}
        for i, start in enumerate(range(0, len(prompts), size))
    ]
    dataset = ray.data.from_items(batches, override_num_blocks=len(batches))
    generated = dataset.map_batches(
        ShardGenerator,
        fn_constructor_args=(model_path, options, counter, len(prompts)),
        batch_size=1,
        concurrency=actors,
        num_cpus=1,
        num_gpus=options.devices if gpus else 0,
    ).take_all()
    predictions: list[str] = []
    endings = Endings()
    for row in sorted(generated, key=lambda r: int(r["index"])):
        predictions += json.loads(row["predictions"])
        stopped, truncated, total = json.loads(row["endings"])
        endings.stopped += stopped
        endings.truncated += truncated
        endings.total += total
    return {"predictions": predictions, "endings": endings}
