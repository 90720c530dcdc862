"""Task dispatch, input files and row matching: what `kubetune eval` and the trainer share.

`score_predictions` is the one entry point for scoring; the file helpers turn JSONL files into
its inputs and every problem with them into an `InputError` that names the file and line, since
a user who passes the wrong file should not have to guess which one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from kubetune.api.tasks import task_info
from kubetune_trainer.data.jsonl import iter_jsonl
from kubetune_trainer.evaluation import InvalidReference
from kubetune_trainer.tasks import task as task_of
from kubetune_trainer.tasks.scorers import UserScorer, mean_metrics

_PARALLEL_MINIMUM = 200  # below this, starting worker processes costs more than it saves


class InputError(ValueError):
    """A problem with an input file; the message starts with `file:line:` where it can."""


class ReferenceRowError(InvalidReference):
    """An invalid reference, with the index of its row in the inputs."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Row:
    line: int
    data: dict[str, Any]


@dataclass(frozen=True)
class Example:
    id: Any
    prediction: str
    reference: dict[str, Any]
    reference_line: int


# --------------------------------------------------------------------------- scoring


Scorer = Mapping[str, Any] | None  # a spec.task.scorer on the wire; None: the task's own


@cache
def _user_scorer(scorer: str) -> Callable[[str, Mapping[str, Any]], dict]:
    return UserScorer(json.loads(scorer)).function()


def _score_one(
    task: str, prediction: str, reference: Mapping[str, Any], strict: bool, scorer: Scorer
) -> dict:
    if scorer is not None:
        return dict(_user_scorer(json.dumps(scorer, sort_keys=True))(prediction, reference))
    return dict(task_of(task).score_example(prediction, reference, strict))


def _score_chunk(
    task: str, chunk: list[tuple[int, str, dict]], strict: bool, scorer: Scorer = None
) -> list[dict]:
    details = []
    for index, prediction, reference in chunk:
        try:
            details.append(_score_one(task, prediction, reference, strict, scorer))
        except InvalidReference as error:
            raise ReferenceRowError(index, str(error)) from None
    return details


def _chunks(items: list, count: int) -> list[list]:
    size = -(-len(items) // count)
    return [items[start : start + size] for start in range(0, len(items), size)]


def _score_all(
    task: str, items: list[tuple[int, str, dict]], strict: bool, workers: int, scorer: Scorer
) -> list[dict]:
    if workers <= 1 or len(items) < _PARALLEL_MINIMUM:
        return _score_chunk(task, items, strict, scorer)
    # spawn, not fork: the trainer calls this from a process that may hold threads (Ray, torch)
    context = get_context("spawn")
    chunks = _chunks(items, workers * 4)
    count = len(chunks)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        parts = pool.map(_score_chunk, [task] * count, chunks, [strict] * count, [scorer] * count)
        return [detail for part in parts for detail in part]


def score_predictions(
    task: str,
    predictions: Sequence[str],
    references: Sequence[Mapping[str, Any]],
    strict: bool = False,
    ids: Sequence[Any] | None = None,
    workers: int = 1,
    scorer: Scorer = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics (fractions in [0, 1] for the built-in scorers) and one detail row per example,
    in input order.

    `references` hold the task's reference fields (the registry's); `ids` default to the row
    index. `strict` only affects GSM8k (outputs without `####` count as wrong). `scorer` is a
    spec.task.scorer (wire form) for the tasks that take one. `workers` > 1 scores in that many
    processes; results do not depend on it. Raises ReferenceRowError for a reference that cannot
    be scored against, ScorerError for a user scorer that cannot be used.
    """
    own = task_of(task)  # ValueError for an unknown task
    if scorer is not None:  # a bad entry point fails here, not in a worker (and stays cached)
        _user_scorer(json.dumps(scorer, sort_keys=True))
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    row_ids = list(ids) if ids is not None else list(range(len(predictions)))
    items = [
        (i, str(p), dict(r)) for i, (p, r) in enumerate(zip(predictions, references, strict=True))
    ]
    details = [
        {"id": row_id, **detail}
        for row_id, detail in zip(
            row_ids, _score_all(task, items, strict, workers, scorer), strict=True
        )
    ]
    return (own.aggregate if scorer is None else mean_metrics)(details), details


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


# --------------------------------------------------------------------------- files


def read_jsonl(path: Path) -> list[Row]:
    """Rows of a JSONL file; blank lines are skipped, anything else must be a JSON object."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        bad_line = raw.count(b"\n", 0, error.start) + 1
        raise InputError(f"{path}:{bad_line}: not UTF-8") from None
    rows = []
    for line in iter_jsonl(text):
        if line.error is not None:
            raise InputError(f"{path}:{line.number}: invalid JSON: {line.error}")
        if not isinstance(line.value, dict):
            kind = _json_type(line.value)
            raise InputError(f"{path}:{line.number}: expected a JSON object, got {kind}")
        rows.append(Row(line.number, line.value))
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def _json_type(value: object) -> str:
    names: dict[type, str] = {list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _require_strings(rows: list[Row], path: Path, fields: Sequence[str], what: str) -> None:
    for row in rows:
        for name in fields:
            if name not in row.data:
                raise InputError(f"{path}:{row.line}: {what} row has no {name!r} field")
            if not isinstance(row.data[name], str):
                kind = _json_type(row.data[name])
                raise InputError(f"{path}:{row.line}: {name!r} must be a string, got {kind}")


def _require_ids(rows: list[Row], path: Path) -> dict[Any, Row]:
    by_id: dict[Any, Row] = {}
    for row in rows:
        key = row.data["id"]
        if not isinstance(key, str | int) or isinstance(key, bool):
            raise InputError(f"{path}:{row.line}: 'id' must be a string or an integer")
        if key in by_id:
            first = by_id[key].line
            raise InputError(f"{path}:{row.line}: duplicate id {key!r} (first on line {first})")
        by_id[key] = row
    return by_id


def _match_by_id(
    predictions: list[Row], references: list[Row], prediction_path: Path, reference_path: Path
) -> list[Example]:
    predicted = _require_ids(predictions, prediction_path)
    expected = _require_ids(references, reference_path)
    for key, row in predicted.items():
        if key not in expected:
            raise InputError(f"{prediction_path}:{row.line}: id {key!r} is not in {reference_path}")
    examples = []
    for key, row in expected.items():
        if key not in predicted:
            raise InputError(
                f"{reference_path}:{row.line}: no prediction with id {key!r} in {prediction_path}"
            )
        examples.append(Example(key, predicted[key].data["prediction"], row.data, row.line))
    return examples


def _match_by_order(
    predictions: list[Row], references: list[Row], prediction_path: Path, reference_path: Path
) -> list[Example]:
    if len(predictions) != len(references):
        raise InputError(
            f"{prediction_path} has {len(predictions)} rows but {reference_path} has"
            f" {len(references)}; without an 'id' in every row of both files rows are matched"
            " by line order"
        )
    examples = []
    for index, (predicted, expected) in enumerate(zip(predictions, references, strict=True)):
        key = expected.data.get("id", predicted.data.get("id", index))
        examples.append(Example(key, predicted.data["prediction"], expected.data, expected.line))
    return examples


def load_examples(task: str, prediction_path: Path, reference_path: Path) -> list[Example]:
    """Read and match both files: by `id` when every row of both has one, else by line."""
    predictions = read_jsonl(prediction_path)
    references = read_jsonl(reference_path)
    _require_strings(predictions, prediction_path, ("prediction",), "prediction")
    _require_strings(
        references, reference_path, task_info(task).reference_fields, f"{task} reference"
    )
    with_ids = all("id" in row.data for row in predictions + references)
    match: Callable[..., list[Example]] = _match_by_id if with_ids else _match_by_order
    return match(predictions, references, prediction_path, reference_path)


def score_files(
    task: str,
    prediction_path: Path,
    reference_path: Path,
    strict: bool = False,
    workers: int = 1,
    scorer: Scorer = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """`score_predictions` on two JSONL files; every input problem is an InputError."""
    examples = load_examples(task, prediction_path, reference_path)
    try:
        return score_predictions(
            task,
            [example.prediction for example in examples],
            [example.reference for example in examples],
            strict=strict,
            ids=[example.id for example in examples],
            workers=workers,
            scorer=scorer,
        )
    except ReferenceRowError as error:
        line = examples[error.index].reference_line
        raise InputError(f"{reference_path}:{line}: {error}") from None
