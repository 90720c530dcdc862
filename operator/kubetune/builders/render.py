"""`kubetune render -f job.yaml`: every object the operator would create, as YAML.

It runs the operator's own pure builders (with the operator configuration read from the
same KUBETUNE_* variables), so a GitOps change can be previewed and diffed before it is
applied. The rendered objects have no ownerReferences: the job has no uid yet.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.builders.rayjob import build_rayjob
from kubetune.builders.report_channel import report_channel
from kubetune.controller.config import OperatorConfig


def owned_objects(job: FineTuneJob, config: OperatorConfig) -> list[dict[str, Any]]:
    """Everything the operator creates for a valid job, in creation order."""
    return [*report_channel(job), build_rayjob(job, config)]


def render_documents(docs: list[Any], config: OperatorConfig) -> tuple[str, list[str]]:
    """YAML of all valid jobs' objects, and the problems of the others."""
    from kubetune.commands import validate_document

    objects: list[dict[str, Any]] = []
    problems: list[str] = []
    for index, doc in enumerate(docs):
        errors, warnings = validate_document(doc)
        problems += [f"[{index}]: {p}" for p in errors + warnings]
        if not errors and not warnings:
            objects += owned_objects(FineTuneJob.model_validate(doc), config)
    text = yaml.safe_dump_all(objects, sort_keys=False, width=100) if objects else ""
    return text, problems


def run_render(args: argparse.Namespace) -> int:
    from kubetune.commands import read_documents

    docs = read_documents(args.file)
    if docs is None:
        return 2
    text, problems = render_documents(docs, OperatorConfig.from_env())
    for problem in problems:
        print(f"{args.file}{problem}", file=sys.stderr)
    sys.stdout.write(text)
    return 1 if problems else 0


def add_render(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "render", help="print the RayJob, report ConfigMap and RBAC the operator would create")
    parser.add_argument("-f", "--file", required=True, help="FineTuneJob YAML file (or - for stdin)")
    parser.set_defaults(handler=run_render)
