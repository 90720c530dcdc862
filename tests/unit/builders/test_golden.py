"""Golden files: everything the operator creates for each example, byte for byte.

Regenerate after an intended change with `KUBETUNE_UPDATE_GOLDEN=1 pytest tests/unit/builders`
and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from kubetune.builders.render import owned_objects
from kubetune.commands import render_documents
from kubetune.config import OperatorConfig
from tests.unit.builders.helpers import EXAMPLES, ROOT, example_job

pytestmark = pytest.mark.unit

GOLDEN = ROOT / "tests" / "golden"
GOLDEN_EXAMPLES = [
    "gsm8k-llama2-7b",
    "gsm8k-llama2-13b",
    "gsm8k-llama2-70b",
    "viggo-llama2-13b-p4d",
    "sql-llama2-7b-lora-1gpu",
    "local-cluster",
]


def rendered(example: str) -> str:
    objects = owned_objects(example_job(example), OperatorConfig())
    return yaml.safe_dump_all(objects, sort_keys=False, width=100)


@pytest.mark.parametrize("example", GOLDEN_EXAMPLES)
def test_matches_golden(example: str) -> None:
    path = GOLDEN / f"{example}.yaml"
    text = rendered(example)
    if os.environ.get("KUBETUNE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing {path}: run with KUBETUNE_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs: review, then KUBETUNE_UPDATE_GOLDEN=1"


def test_render_prints_every_object_without_owner() -> None:
    doc = yaml.safe_load((EXAMPLES / "gsm8k-llama2-13b.yaml").read_text())
    text, problems = render_documents([doc], OperatorConfig())
    assert problems == []
    kinds = [o["kind"] for o in yaml.safe_load_all(text)]
    assert kinds == [
        "NetworkPolicy",
        "FineTuneJobReport",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "RayJob",
    ]
    assert "ownerReferences" not in text and "&id" not in text


def test_render_refuses_cluster_invalid_job() -> None:
    doc = yaml.safe_load((EXAMPLES / "quickstart-local.yaml").read_text())
    text, problems = render_documents([doc], OperatorConfig())
    assert text == "" and any("storageURI" in p for p in problems)


def test_render_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from kubetune.commands import add_render

    parser = argparse.ArgumentParser()
    add_render(parser.add_subparsers())
    args = parser.parse_args(["render", "-f", str(EXAMPLES / "gsm8k-llama2-7b.yaml")])
    assert args.handler(args) == 0
    assert "kind: RayJob" in capsys.readouterr().out
