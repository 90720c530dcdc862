"""`kubetune validate`, `kubetune plan`, `kubetune render` and `kubetune manifests`: offline, no
cluster needed.

`kubetune plan -f job.yaml` prints what each phase of the job needs (GPU memory per device, host
memory and disk per node), what the pods have, a verdict naming the binding constraint with a
remedy, storage, and time and cost when the training data is a local JSONL file it can count.

`kubetune render -f job.yaml` prints every object the operator would create, from the
operator's own pure builders with the operator configuration read from the same KUBETUNE_*
variables. The rendered objects have no ownerReferences: the job has no uid yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from kubetune.api.v1alpha1 import FineTuneJob, stages_of
from kubetune.builders.render import owned_objects
from kubetune.config import OperatorConfig
from kubetune.crd import render_crds, render_report_crd
from kubetune.planning import (
    SKIP_FIT_CHECK_HINT,
    DataSize,
    Plan,
    build_plan,
    plan_json,
    plan_table,
    refused_for_fit,
    shape_of,
)
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


# A rough tokens-per-character ratio for English JSONL (Llama-2's tokenizer averages about 3.7
# characters a token on English prose; JSON keys and quotes count as characters here too).
CHARS_PER_TOKEN = 4.0


def local_jsonl(uri: str | None, base: Path) -> Path | None:
    if not uri or ("://" in uri and not uri.startswith("file://")):
        return None
    path = Path(uri.removeprefix("file://"))
    path = path if path.is_absolute() else base / path
    return path if path.suffix == ".jsonl" and path.is_file() else None


def data_sizes(job: FineTuneJob, base: Path) -> list[DataSize] | None:
    """Rows and mean tokens (estimated from characters) of each stage's local training file."""
    sizes = []
    for stage in stages_of(job.spec):
        train = local_jsonl(stage.data.train.uri, base)
        if train is None:
            return None
        lines = [line for line in train.read_text().split("\n") if line.strip()]
        if stage.data.max_samples:
            lines = lines[: stage.data.max_samples]
        test = local_jsonl(stage.data.test.uri if stage.data.test else None, base)
        test_rows = (
            sum(1 for line in test.read_text().split("\n") if line.strip()) if test else None
        )
        mean = sum(len(line) for line in lines) / max(1, len(lines)) / CHARS_PER_TOKEN
        sizes.append(DataSize(len(lines), mean, test_rows))
    return sizes


def local_model_config(name: str, base: Path) -> dict[str, Any] | None:
    """config.json of a model given as a local folder (planning never downloads weights)."""
    folder = Path(name) if Path(name).is_absolute() else base / name
    config = folder / "config.json"
    return json.loads(config.read_text()) if config.is_file() else None


def plan_job(
    job: FineTuneJob, base: Path, price: float | None = None, data: DataSize | None = None
) -> Plan | None:
    """The plan; `data` (the same for every stage) replaces what local files would say."""
    shape = shape_of(job.spec.model.name, local_model_config(job.spec.model.name, base))
    sizes = [data] * len(stages_of(job.spec)) if data else data_sizes(job, base)
    return build_plan(job.spec, shape, OperatorConfig.from_env(), sizes, price)


def plan_line(plan: Plan | None) -> str:
    if plan is None:
        return "plan: model size unknown (not a builtin or Llama-2 name, no local config.json)"
    return f"plan: {plan.verdict} — {plan.reason}" + (
        f"; remedy: {plan.remedy}" if plan.remedy else ""
    )


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
        if not errors:
            job = parse_finetunejob(doc)
            plan = plan_job(job, base_of(args.file))
            refused = plan is not None and refused_for_fit(plan.verdict, job.spec)
            stream = sys.stderr if refused else sys.stdout
            print(f"{label}: {plan_line(plan)}", file=stream)
            if refused:
                print(f"{label}: {SKIP_FIT_CHECK_HINT}", file=stream)
            failed = failed or refused
        stream.flush()
    return 1 if failed else 0


def base_of(path: str) -> Path:
    """Relative paths in a manifest are relative to its folder (stdin: the working folder)."""
    return Path.cwd() if path == "-" else Path(path).resolve().parent


def run_plan(args: argparse.Namespace) -> int:
    documents = read_documents(args.file)
    if documents is None:
        return 2
    failed = False
    for doc in documents:
        errors, _ = validate_document(doc)
        if errors:
            for problem in errors:
                print(f"{args.file}: {problem}", file=sys.stderr)
            failed = True
            continue
        job = parse_finetunejob(doc)
        data = DataSize(args.rows, args.mean_tokens, args.test_rows) if args.rows else None
        plan = plan_job(job, base_of(args.file), args.price, data)
        if plan is None:
            print(f"{args.file}: {plan_line(None)}", file=sys.stderr)
            failed = True
        elif args.output == "json":
            print(json.dumps({"name": job.metadata.name, **plan_json(plan)}, indent=2))
        else:
            print(plan_table(plan, f"FineTuneJob {job.metadata.name}"))
        failed = failed or (plan is not None and plan.verdict == "WillNotFit")
    return 1 if failed else 0


def add_plan(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan", help="memory fit, nodes, storage, time and cost of a FineTuneJob, offline"
    )
    parser.add_argument("-f", "--file", required=True, help="YAML file (or - for stdin)")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument(
        "--price", type=float, help="USD per node-hour (default: the built-in table)"
    )
    parser.add_argument(
        "--rows", type=int, help="training rows per stage (default: counted in local files)"
    )
    parser.add_argument(
        "--mean-tokens", type=float, default=200.0, help="tokens per formatted row (with --rows)"
    )
    parser.add_argument("--test-rows", type=int, help="test rows to evaluate (with --rows)")
    parser.set_defaults(handler=run_plan)


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
