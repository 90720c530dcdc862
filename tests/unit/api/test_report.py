"""The report format across versions: a newer trainer's extra fields are set aside (and
named), an older report still reads, a known field with a bad value is still an error."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from pydantic import ValidationError, create_model

from kubetune.api.base import cut_text
from kubetune.api.report import (
    REPORT_SCHEMA_VERSION,
    TrainerReport,
    downsample,
    parse_report_json,
    strip_unknown,
)

pytestmark = pytest.mark.unit

EPOCH = {
    "stage": "gsm8k",
    "epoch": 1,
    "trainLoss": 1.2,
    "validationLoss": 1.1,
    "validationPerplexity": 3.0,
}


def newer_report() -> dict[str, Any]:
    """What a trainer one schema version ahead might write."""
    return {
        "schemaVersion": REPORT_SCHEMA_VERSION + 1,
        "jobUid": "u-1",
        "phase": "Training",
        "throughput": {"tokensPerSecond": 1200.0},
        "epochs": [{**EPOCH, "gradNorm": 0.4}],
        "bestCheckpoint": {
            "uri": "s3://b/e1",
            "stage": "gsm8k",
            "epoch": 1,
            "validationPerplexity": 3.0,
            "sha256": "ab",
        },
    }


def test_newer_report_reads_with_unknown_fields_named() -> None:
    parsed = parse_report_json(json.dumps(newer_report()))
    assert parsed.report.epochs[0].validation_perplexity == 3.0
    assert parsed.report.job_uid == "u-1"
    assert set(parsed.ignored) == {"throughput", "epochs[0].gradNorm", "bestCheckpoint.sha256"}


def test_older_operator_model_reads_todays_report() -> None:
    """An operator whose model lacks a field today's trainer writes (jobUid) still reads it."""
    fields = {
        name: (f.annotation, f)
        for name, f in TrainerReport.model_fields.items()
        if name != "job_uid"
    }
    older = create_model("OlderTrainerReport", __base__=TrainerReport.__base__, **fields)
    text = TrainerReport(job_uid="u-2", phase="Evaluating").model_dump_json(by_alias=True)
    parsed = parse_report_json(text, older)  # type: ignore[arg-type]
    assert parsed.report.phase == "Evaluating" and parsed.ignored == ("jobUid",)


def test_older_report_reads_with_defaults() -> None:
    parsed = parse_report_json(json.dumps({"schemaVersion": 1, "phase": "Preparing"}))
    assert parsed.report.job_uid is None and parsed.report.epochs == [] and not parsed.ignored


def test_known_field_with_a_bad_value_is_still_an_error() -> None:
    with pytest.raises(ValidationError, match="phase"):
        parse_report_json(json.dumps({**newer_report(), "phase": "Dancing"}))
    with pytest.raises(ValidationError, match="epochs"):
        parse_report_json(json.dumps({"epochs": [EPOCH] * 5000}))


def test_strip_unknown_leaves_non_objects_alone() -> None:
    assert strip_unknown(TrainerReport, [1, 2]) == ([1, 2], [])


@pytest.mark.parametrize("size", [0, 10, 32768, 32769, 100_000, 3_000_000])
def test_cut_text_fits_and_says_how_much_was_cut(size: int) -> None:
    text = "".join(chr(97 + i % 26) for i in range(size))
    cut = cut_text(text, 32768)
    assert len(cut) <= 32768
    if size <= 32768:
        assert cut == text
    else:
        count = int(cut.split(" characters cut")[0].rsplit(" ", 1)[1])
        assert len(cut) - len(f" [... {count} characters cut ...] ") + count == size
        assert cut.startswith(text[:100]) and cut.endswith(text[-100:])


@pytest.mark.parametrize(("length", "limit"), [(0, 5), (3, 5), (5, 5), (6, 5), (1000, 200), (7, 1)])
def test_downsample_keeps_the_ends_and_spreads_evenly(length: int, limit: int) -> None:
    points = list(range(length))
    kept = downsample(points, limit)
    assert len(kept) == min(length, limit) and kept == sorted(set(kept))
    if length and limit > 1:
        assert kept[0] == 0 and kept[-1] == length - 1
    if length > limit > 1:
        gaps = [b - a for a, b in itertools.pairwise(kept)]
        assert max(gaps) - min(gaps) <= 1
