"""Shared loaders for builder tests: examples as FineTuneJobs with a namespace and a uid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kubetune.api.v1alpha1 import FineTuneJob

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
FAKE_UID = "00000000-0000-4000-8000-000000000001"
NAMESPACE = "team-llm"


def example_doc(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    doc["metadata"].update(namespace=NAMESPACE, uid=FAKE_UID, generation=1)
    return doc


def example_job(name: str) -> FineTuneJob:
    return FineTuneJob.model_validate(example_doc(name))
