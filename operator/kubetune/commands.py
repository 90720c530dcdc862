"""`kubetune validate` and `kubetune manifests`: offline, no cluster needed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from kubetune.crd import render_crds
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
        for problem in warnings:
            print(f"{label}: warning: {problem}", file=sys.stderr)
        failed = failed or bool(errors)
        if not errors:
            name = doc.get("metadata", {}).get("name")
            print(f"{label}: FineTuneJob {name} is valid")
    return 1 if failed else 0


def add_validate(subparsers: Any) -> None:
    parser = subparsers.add_parser("validate", help="validate FineTuneJob manifests offline")
    parser.add_argument("-f", "--file", required=True, help="YAML file (or - for stdin)")
    parser.set_defaults(handler=run_validate)


def run_manifests(args: argparse.Namespace) -> int:
    sys.stdout.write(render_crds())
    return 0


def add_manifests(subparsers: Any) -> None:
    parser = subparsers.add_parser("manifests", help="print the FineTuneJob CRD")
    parser.set_defaults(handler=run_manifests)
