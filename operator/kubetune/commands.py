"""`kubetune validate`, `kubetune render` and `kubetune manifests`: offline, no cluster needed.

`kubetune render -f job.yaml` prints every object the operator would create, from the
operator's own pure builders with the operator configuration read from the same KUBETUNE_*
variables. The rendered objects have no ownerReferences: the job has no uid yet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.builders.render import owned_objects
from kubetune.config import OperatorConfig
from kubetune.crd import render_crds, render_report_crd
from kubetune.validation import FieldProblem, SpecError, parse_finetunejob, semantic_problems


def load_documents(path: str) -> list[Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def read_documents(path: str) -> list[Any] | None:
    """The YAML documents of `path`, or None after saying on stderr why they cannot be read."""
    try:
        return load_documents(path)
    except (OSError, yaml.YAMLError) as error:
        print(f"{path}: {error}", file=sys.stderr)
        return None


def validate_document(doc: Any) -> tuple[list[FieldProblem], list[FieldProblem]]:
    """Errors and cluster-only warnings of one FineTuneJob document."""
    try:
        job = parse_finetunejob(doc)
    except SpecError as error:
        return error.problems, []
    problems = semantic_problems(job.spec)
    return [p for p in problems if not p.cluster_only], [p for p in problems if p.cluster_only]


def run_validate(args: argparse.Namespace) -> int:
    documents = read_documents(args.file)
    if documents is None:
        return 2
    if not documents:
        print(f"{args.file}: no FineTuneJob found", file=sys.stderr)
        return 1
    failed = False
    for index, doc in enumerate(documents):
        label = args.file if len(documents) == 1 else f"{args.file}[{index}]"
        errors, warnings = validate_document(doc)
        for problem in errors:
            print(f"{label}: {problem}", file=sys.stderr)
        failed = failed or bool(errors)
        if not errors:
            name = doc.get("metadata", {}).get("name")
            print(f"{label}: FineTuneJob {name} is valid")
        # Warnings follow the verdict on the same stream, one per line, so they can neither
        # be lost nor interleave with it when both streams share a terminal or a pipe.
        stream = sys.stderr if errors else sys.stdout
        for problem in warnings:
            print(f"{label}: warning: {problem}", file=stream)
        stream.flush()
    return 1 if failed else 0


def add_validate(subparsers: Any) -> None:
    parser = subparsers.add_parser("validate", help="validate FineTuneJob manifests offline")
    parser.add_argument("-f", "--file", required=True, help="YAML file (or - for stdin)")
    parser.set_defaults(handler=run_validate)


def run_manifests(args: argparse.Namespace) -> int:
    sys.stdout.write(render_crds() + "---\n" + render_report_crd())
    return 0


def add_manifests(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "manifests", help="print the FineTuneJob and FineTuneJobReport CRDs"
    )
    parser.set_defaults(handler=run_manifests)


def render_documents(docs: list[Any], config: OperatorConfig) -> tuple[str, list[str]]:
    """YAML of all valid jobs' objects, and the problems of the others."""
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
        "render", help="print the RayJob, report, NetworkPolicy and RBAC the operator would create"
    )
    parser.add_argument(
        "-f", "--file", required=True, help="FineTuneJob YAML file (or - for stdin)"
    )
    parser.set_defaults(handler=run_render)
