"""The scorers a user picks in `spec.task.scorer` (registry: `kubetune.api.tasks.SCORERS`).

Each compares one prediction with the reference answer (`reference["completion"]`, the last
assistant turn of a chat row or the rendered completionTemplate) and returns one value per
metric; a metric over the rows is the mean of its values (booleans count as 0 and 1), so every
scorer, the user's own included, adds up the same way. Pure Python: the user's function is
imported here, in the trainer and in `kubetune eval`, and nowhere else.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.api.tasks import SCORERS
from kubetune_trainer.metrics import normalize_text

Detail = dict[str, object]
Row = Mapping[str, Any]
NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
DEFAULT_TOLERANCE = 1e-6


class ScorerError(ValueError):
    """The user's scorer cannot be used: the message names the spec field."""


def _answer(reference: Row) -> str:
    return str(reference["completion"])


def exact_match(prediction: str, reference: Row) -> Detail:
    return {"exact_match": normalize_text(prediction) == normalize_text(_answer(reference))}


def _extract(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.search(text)
    if found is None:
        return None
    return (found.group(1) if pattern.groups else found.group(0)).strip()


def regex(pattern: str) -> Callable[[str, Row], Detail]:
    compiled = re.compile(pattern)

    def score(prediction: str, reference: Row) -> Detail:
        predicted = _extract(compiled, prediction)
        expected = _extract(compiled, _answer(reference))
        return {
            "regex_match": predicted is not None and predicted == expected,
            "extracted_rate": predicted is not None,
        }

    return score


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def json_fields(fields: Sequence[str]) -> Callable[[str, Row], Detail]:
    def score(prediction: str, reference: Row) -> Detail:
        predicted = _json_object(prediction.strip())
        expected = _json_object(_answer(reference).strip())
        if expected is None:
            raise ScorerError("scorer json_fields: a reference answer is not a JSON object")
        match = predicted is not None and all(
            name in predicted and predicted[name] == expected.get(name) for name in fields
        )
        return {"json_fields_match": match, "json_valid_rate": predicted is not None}

    return score


def last_number(text: str) -> float | None:
    found = NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric(tolerance: float) -> Callable[[str, Row], Detail]:
    def score(prediction: str, reference: Row) -> Detail:
        predicted = last_number(prediction)
        expected = last_number(_answer(reference))
        match = (
            predicted is not None
            and expected is not None
            and math.isclose(predicted, expected, rel_tol=0.0, abs_tol=tolerance)
        )
        return {"numeric_match": match, "parsed_rate": predicted is not None}

    return score


def load_entry_point(entry_point: str) -> Callable[[str, Row], Mapping[str, Any]]:
    """The user's `module:function`, checked to take (prediction, reference)."""
    where = f"task.scorer.entryPoint {entry_point!r}"
    module_name, _, name = entry_point.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise ScorerError(
            f"{where}: cannot import {module_name}: {type(error).__name__}: {error}"
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ScorerError(f"{where}: module {module_name} has no function {name}")
    try:
        inspect.signature(function).bind("prediction", {})
    except TypeError:
        raise ScorerError(
            f"{where}: must take (prediction: str, reference: dict), has {name}"
            f"{inspect.signature(function)}"
        ) from None
    except ValueError:  # builtins without a signature: the first call will tell
        pass
    return function


def _python(entry_point: str) -> Callable[[str, Row], Detail]:
    function = load_entry_point(entry_point)

    def score(prediction: str, reference: Row) -> Detail:
        try:
            result = function(prediction, dict(reference))
        except Exception as error:
            raise ScorerError(
                f"task.scorer.entryPoint {entry_point!r} raised {type(error).__name__}: {error}"
            ) from error
        return checked_result(entry_point, result)

    return score


def checked_result(entry_point: str, result: object) -> Detail:
    """The user's result as metric values, or a ScorerError saying what is wrong with it."""
    where = f"task.scorer.entryPoint {entry_point!r}"
    if not isinstance(result, Mapping) or not result:
        raise ScorerError(
            f"{where}: must return a non-empty dict of metric -> number, got {result!r}"
        )
    for key, value in result.items():
        if not isinstance(key, str) or not key:
            raise ScorerError(f"{where}: metric names must be non-empty strings, got {key!r}")
        if not isinstance(value, int | float) or (isinstance(value, float) and math.isnan(value)):
            raise ScorerError(f"{where}: metric {key!r} must be a number or a bool, got {value!r}")
    return dict(result)


@dataclass(frozen=True)
class UserScorer:
    """A scorer from a `spec.task.scorer` (as its wire dict, so it crosses processes)."""

    spec: Mapping[str, Any]

    def __post_init__(self) -> None:
        if self.spec.get("kind") not in SCORERS:
            raise ScorerError(f"task.scorer.kind: unknown scorer {self.spec.get('kind')!r}")

    @property
    def kind(self) -> str:
        return str(self.spec["kind"])

    def function(self) -> Callable[[str, Row], Detail]:
        kind = self.kind
        if kind == "regex":
            return regex(self.spec["pattern"])
        if kind == "json_fields":
            return json_fields(self.spec["fields"])
        if kind == "numeric":
            tolerance = self.spec.get("tolerance")
            return numeric(DEFAULT_TOLERANCE if tolerance is None else float(tolerance))
        if kind == "python":
            return _python(self.spec["entryPoint"])
        return exact_match


def mean_metrics(details: Sequence[Detail]) -> dict[str, float]:
    """Each metric's mean over the rows, in the order the first row names them; every row
    must report the same metrics."""
    if not details:
        return {}
    names = [key for key in details[0] if key != "id"]
    metrics = {}
    for name in names:
        values = []
        for index, detail in enumerate(details):
            if name not in detail:
                raise ScorerError(f"the scorer reported no {name!r} for row {index + 1}")
            values.append(float(detail[name]))  # type: ignore[arg-type]
        metrics[name] = sum(values) / len(values)
    return metrics


def headline(task: str, scorer: Mapping[str, Any] | None, metrics: Mapping[str, float]) -> str:
    """The metric `.status.evaluation.score` reports: the task's own, the chosen scorer's, or
    the first one the user's function returns."""
    from kubetune.api.tasks import TASKS

    if scorer is None:
        return TASKS[task].headline
    named = SCORERS[str(scorer["kind"])].metrics
    return named[0] if named else next(iter(metrics), "")
