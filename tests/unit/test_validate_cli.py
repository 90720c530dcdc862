"""`kubetune validate` as a user runs it: the console script, files on disk, exit codes."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.invalid_corpus import CASES, EXAMPLES, invalid_document

pytestmark = pytest.mark.unit

KUBETUNE = [sys.executable, "-m", "kubetune.cli"]


def run_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KUBETUNE, "validate", "-f", str(path)], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_valid(example):
    result = run_validate(example)
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout


def test_invalid_corpus_names_each_field(tmp_path):
    """One process for the whole corpus (a process per case would cost seconds each)."""
    documents = [invalid_document(case) for case in CASES]
    for case, doc in zip(CASES, documents, strict=True):
        path = tmp_path / f"{case.id}.yaml"
        path.write_text(yaml.safe_dump(doc))
    from kubetune.commands import validate_document

    for case, doc in zip(CASES, documents, strict=True):
        errors, _ = validate_document(doc)
        assert errors, case.id
        assert str(errors[0]).startswith(case.field + ":"), (case.id, [str(e) for e in errors])


@pytest.mark.parametrize("case", CASES[:3] + CASES[-3:], ids=lambda c: c.id)
def test_invalid_files_exit_non_zero_with_the_field_path(tmp_path, case):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(invalid_document(case)))
    result = run_validate(path)
    assert result.returncode == 1
    assert f"{path}: {case.field}:" in result.stderr


def test_semantic_problems_fail_validation(tmp_path):
    doc = yaml.safe_load((EXAMPLES / "gsm8k-llama2-13b.yaml").read_text())
    doc["spec"]["compute"]["workers"] = 12
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = run_validate(path)
    assert result.returncode == 1
    assert (
        "spec.compute.workers: 12 workers do not fill whole g5.48xlarge nodes of 8 GPUs"
        in result.stderr
    )


def test_local_storage_is_only_a_warning_offline():
    result = run_validate(EXAMPLES / "quickstart-local.yaml")
    assert result.returncode == 0 and result.stderr == ""
    verdict, warning, plan = result.stdout.splitlines()
    assert verdict.endswith("is valid")
    assert plan.startswith(f"{EXAMPLES / 'quickstart-local.yaml'}: plan: Fits — binding:")
    assert warning.startswith(
        f"{EXAMPLES / 'quickstart-local.yaml'}: warning: spec.output.storageURI"
    )


def test_unreadable_yaml_is_an_error(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("spec: [unclosed")
    result = run_validate(path)
    assert result.returncode == 2 and str(path) in result.stderr
