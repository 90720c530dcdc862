"""From a stage's DataSpec to tokenized train/validation examples, test rows and a data report.

Order of operations (all seeded with training.seed, so every worker and every retry sees the
same data): read -> maxSamples (seeded sample) -> validation split (given file, or a seeded
validationFraction of train, default 0.1) -> format with the preset -> tokenize -> drop rows
that do not fit. Every row left out is counted by reason with its source row numbers.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.report import DroppedRows, SplitReport
from kubetune_trainer.data.formatters import RowError
from kubetune_trainer.data.loaders import LoadedRows, load_rows
from kubetune_trainer.data.presets import Preset
from kubetune_trainer.data.tokenization import Example, encode_pieces, encode_segments

DEFAULT_VALIDATION_FRACTION = 0.1
MAX_EXAMPLE_ROWS = 20
MAX_FEW_SHOT = 32  # raw train rows kept for the baseline's few-shot prompt

Rows = list[tuple[int, dict[str, Any]]]


@dataclass
class DropLog:
    """Rows left out of one split, grouped by reason."""

    by_reason: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    def add(self, row: int, reason: str) -> None:
        self.by_reason[reason].append(row)

    def report(self) -> list[DroppedRows]:
        return [
            DroppedRows(reason=reason, count=len(rows), examples=sorted(rows)[:MAX_EXAMPLE_ROWS])
            for reason, rows in sorted(self.by_reason.items())
        ]

    @property
    def total(self) -> int:
        return sum(len(rows) for rows in self.by_reason.values())


@dataclass
class TestRow:
    """A test row for evaluation: its prompt, its reference completion and its own fields."""

    row: int
    prompt: str
    completion: str
    fields: dict[str, Any]


@dataclass
class PreparedData:
    train: list[Example]
    validation: list[Example]
    test: list[TestRow]
    reports: list[SplitReport]
    few_shot: list[dict[str, Any]] = field(default_factory=list)


def seeded_sample(rows: Rows, count: int | None, seed: int) -> Rows:
    if count is None or count >= len(rows):
        return rows
    picked = random.Random(seed).sample(range(len(rows)), count)
    return [rows[i] for i in sorted(picked)]


def split_validation(rows: Rows, fraction: float, seed: int) -> tuple[Rows, Rows]:
    """(train, validation): a seeded `fraction` of the rows, at least one when possible."""
    order = list(range(len(rows)))
    random.Random(seed + 1).shuffle(order)
    size = min(len(rows) - 1, max(1, round(len(rows) * fraction))) if len(rows) > 1 else 0
    held = set(order[:size])
    return (
        [r for i, r in enumerate(rows) if i not in held],
        [r for i, r in enumerate(rows) if i in held],
    )


def formatted(rows: Rows, preset: Preset, drops: DropLog) -> Iterator[tuple[int, Any, str, str]]:
    """(row number, row, prompt, completion) of each row the preset can format; the others
    go to `drops` with the reason."""
    for number, row in rows:
        try:
            prompt, completion = preset(row)
        except RowError as exc:
            drops.add(number, exc.reason)
            continue
        yield number, row, prompt, completion


def tokenize_rows(
    rows: Rows,
    preset: Preset,
    tokenizer: Any,
    context_length: int,
    loss_on_prompt: bool,
    drops: DropLog,
) -> list[Example]:
    """Format and tokenize; rows that fail or do not fit go to `drops` with the reason."""
    stop_id = tokenizer.convert_tokens_to_ids(preset.stop_token)
    examples = []
    for number, row in rows:
        try:
            segments = preset.segments(row)
        except RowError as exc:
            drops.add(number, exc.reason)
            continue
        pieces = encode_pieces(tokenizer, segments)
        ids, labels = encode_segments(tokenizer, segments, loss_on_prompt, pieces)
        if stop_id not in _last_trained(segments, pieces):
            drops.add(number, f"stop token {preset.stop_token} not kept by the tokenizer")
        elif len(ids) > context_length:
            drops.add(number, f"longer than contextLength {context_length} tokens")
        else:
            examples.append(Example(number, tuple(ids), tuple(labels)))
    return examples


def _last_trained(segments: list[tuple[str, bool]], pieces: list[list[int]]) -> list[int]:
    """Token ids of the last piece in the loss: the answer, which must end with the stop."""
    trained = [piece for (_, in_loss), piece in zip(segments, pieces, strict=True) if in_loss]
    return trained[-1] if trained else []


def test_rows(rows: Rows, preset: Preset, drops: DropLog) -> list[TestRow]:
    return [
        TestRow(number, prompt, completion.removesuffix(preset.stop_token), row)
        for number, row, prompt, completion in formatted(rows, preset, drops)
    ]


def _loaded_drops(loaded: LoadedRows) -> DropLog:
    drops = DropLog()
    for number, reason in loaded.problems:
        drops.add(number, reason)
    return drops


def _split_report(name: str, source: str, rows_read: int, used: int, drops: DropLog) -> SplitReport:
    return SplitReport(
        split=name, source=source, rows_read=rows_read, rows_used=used, dropped=drops.report()
    )


def load_texts(data: Any, base_dir: Path | None) -> dict[str, LoadedRows]:
    """Raw rows of every split the DataSpec names (also used to train the builtin tokenizer)."""
    loaded = {"train": load_rows(data.train.uri, data.train.format, base_dir)}
    for name in ("validation", "test"):
        source = getattr(data, name)
        if source is not None:
            loaded[name] = load_rows(source.uri, source.format, base_dir)
    return loaded


def prepare_data(
    data: Any,
    preset: Preset,
    tokenizer: Any,
    *,
    context_length: int,
    seed: int,
    loss_on_prompt: bool = False,
    stage: str = "",
    base_dir: Path | None = None,
    loaded: dict[str, LoadedRows] | None = None,
    test_limit: int | None = None,
) -> PreparedData:
    """Everything one stage trains and evaluates on (see module docstring)."""
    loaded = loaded or load_texts(data, base_dir)
    prefix = f"{stage}/" if stage else ""
    train_drops = _loaded_drops(loaded["train"])
    train_rows = seeded_sample(loaded["train"].rows, data.max_samples, seed)
    reports = []
    if "validation" in loaded:
        val_rows, val_source = loaded["validation"].rows, data.validation.uri
        val_drops = _loaded_drops(loaded["validation"])
        val_read = loaded["validation"].rows_read
    else:
        fraction = data.validation_fraction or DEFAULT_VALIDATION_FRACTION
        train_rows, val_rows = split_validation(train_rows, fraction, seed)
        val_source = f"{data.train.uri} (seeded {fraction:g} of train)"
        val_drops, val_read = DropLog(), len(val_rows)
    train = tokenize_rows(
        train_rows, preset, tokenizer, context_length, loss_on_prompt, train_drops
    )
    validation = tokenize_rows(
        val_rows, preset, tokenizer, context_length, loss_on_prompt, val_drops
    )
    reports.append(
        _split_report(
            f"{prefix}train",
            data.train.uri,
            len(train_rows) + len(loaded["train"].problems),
            len(train),
            train_drops,
        )
    )
    reports.append(
        _split_report(f"{prefix}validation", val_source, val_read, len(validation), val_drops)
    )
    test: list[TestRow] = []
    if "test" in loaded:
        test_drops = _loaded_drops(loaded["test"])
        candidates = loaded["test"].rows
        if test_limit is not None and len(candidates) > test_limit:
            for number, _ in candidates[test_limit:]:
                test_drops.add(number, f"beyond evaluation.maxSamples {test_limit}")
            candidates = candidates[:test_limit]
        test = test_rows(candidates, preset, test_drops)
        reports.append(
            _split_report(
                f"{prefix}test", data.test.uri, loaded["test"].rows_read, len(test), test_drops
            )
        )
    if not train or not validation:
        raise ValueError(
            f"stage {stage or 'default'}: no usable training or validation rows "
            f"({len(train)} train, {len(validation)} validation); see the data report"
        )
    few_shot = [row for _, row in train_rows[:MAX_FEW_SHOT]]
    return PreparedData(train, validation, test, reports, few_shot)
