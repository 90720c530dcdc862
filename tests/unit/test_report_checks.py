"""What the operator accepts from a report: its own uid, checkpoints under its own storage."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.report_checks import read_report, under
from tests.controlplane.operator.helpers import job_manifest

pytestmark = pytest.mark.unit
STORAGE = "s3://kubetune-checkpoints/llama2-7b-gsm8k"


def job(uid: str | None = "u-1") -> FineTuneJob:
    doc = job_manifest("j")
    if uid:
        doc["metadata"]["uid"] = uid
    return FineTuneJob.model_validate(doc)


def text(**fields: Any) -> str:
    best = {"uri": f"{STORAGE}/u-1/e1", "stage": "gsm8k", "epoch": 1, "validationPerplexity": 3.0}
    return json.dumps({"jobUid": "u-1", "phase": "Training", "bestCheckpoint": best, **fields})


def test_own_report_is_used() -> None:
    reading = read_report(text(), job())
    assert reading.report is not None and reading.problem is None


def test_no_report_yet() -> None:
    assert read_report(None, job()).report is None and read_report("", job()).problem is None


def test_report_of_another_incarnation_is_ignored_with_a_note() -> None:
    reading = read_report(text(jobUid="u-0"), job())
    assert reading.report is None and reading.problem is None and "u-0" in reading.note


def test_report_without_uid_is_refused_naming_the_versions() -> None:
    doc = json.loads(text())
    del doc["jobUid"]
    reading = read_report(json.dumps({**doc, "schemaVersion": 1}), job())
    assert reading.problem is not None and "report schema 1" in reading.problem.message


@pytest.mark.parametrize(
    "uri",
    [
        "s3://attacker/x",
        f"{STORAGE}-other/e1",
        f"{STORAGE}/e1",  # the shared storageURI, outside this job's own folder
        f"{STORAGE}/u-2/e1",  # another job's folder in the same storageURI
        f"{STORAGE}/../x",
        "pvc://kubetune-checkpoints/llama2-7b-gsm8k/e1",
    ],
)
def test_checkpoints_outside_the_jobs_storage_are_refused(uri: str) -> None:
    best = {"uri": uri, "stage": "gsm8k", "epoch": 1, "validationPerplexity": 3.0}
    reading = read_report(text(bestCheckpoint=best), job())
    assert reading.problem is not None and reading.problem.reason == "InvalidReport"
    assert "bestCheckpoint.uri is outside this job's storage" in reading.problem.message
    assert uri not in reading.problem.message, "a hostile value is not echoed"


def test_a_trainer_from_before_per_job_folders_keeps_its_run() -> None:
    """Report schema 2 (a RayJob started before the operator was upgraded) writes under the
    storageURI itself: accepted there, so an upgrade does not end running jobs."""
    best = {"uri": f"{STORAGE}/e1", "stage": "gsm8k", "epoch": 1, "validationPerplexity": 3.0}
    reading = read_report(text(schemaVersion=2, bestCheckpoint=best), job())
    assert reading.problem is None and reading.report is not None
    foreign = {**best, "uri": "s3://attacker/x"}
    assert read_report(text(schemaVersion=2, bestCheckpoint=foreign), job()).problem is not None


def test_unreadable_report_names_the_field() -> None:
    reading = read_report(text(step=-3), job())
    assert reading.problem is not None and "step" in reading.problem.message
    assert read_report("{not json", job()).problem is not None


def test_under_is_by_path_segment() -> None:
    assert under("s3://b/run/e1", "s3://b/run/") and under("s3://b/run", "s3://b/run")
    assert not under("s3://b/run2/e1", "s3://b/run")


def test_hostile_nesting_is_refused_not_a_crash() -> None:
    reading = read_report("[" * 200_000, job())
    assert reading.problem is not None and reading.problem.reason == "InvalidReport"
