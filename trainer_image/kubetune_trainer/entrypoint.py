"""Cluster entrypoint (the command the operator puts in the RayJob):

    python -m kubetune_trainer.entrypoint --job-name NAME --namespace NS --job-uid UID \\
        --report finetunejobreport:NAME|file:PATH [--spec-json JSON] [--output-dir DIR]

Without --spec-json the trainer reads its own FineTuneJob through the API (job_source.py),
so the spec has no size limit. Runs the whole job (all stages, evaluation) and writes
TrainerReport documents, stamped with the job's uid, through the reporter; on failure the
last report has phase Failed and the error, and the exit code is 1 (2 for a bad spec).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubetune.api.report import TrainerReport
from kubetune.validation import SpecError, parse_spec
from kubetune_trainer.job_source import JobSourceError, read_own_job
from kubetune_trainer.reporting import (
    ThrottledReporter,
    default_namespace,
    deliver_final_report,
    redact,
    reporter_from_target,
)

REPORT_INTERVAL_S = 10.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune_trainer.entrypoint", description="Run one FineTuneJob on this Ray cluster."
    )
    parser.add_argument(
        "--spec-json",
        default=None,
        help="FineTuneJobSpec as JSON (wire form); default: read the FineTuneJob from the API.",
    )
    parser.add_argument("--job-name", required=True, help="FineTuneJob name (names the Ray runs).")
    parser.add_argument(
        "--namespace", default=None, help="Namespace of the job and its FineTuneJobReport."
    )
    parser.add_argument(
        "--job-uid", default=None, help="uid of the FineTuneJob (checked, and put in reports)."
    )
    parser.add_argument("--report", required=True, help="finetunejobreport:NAME or file:PATH.")
    parser.add_argument("--output-dir", default=None, help="Scratch folder (default: a temp dir).")
    parser.add_argument(
        "--report-interval",
        type=float,
        default=REPORT_INTERVAL_S,
        help="Seconds between progress reports (phase changes always go out).",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reporter = ThrottledReporter(
        reporter_from_target(args.report, args.namespace), args.report_interval
    )
    try:
        spec = parse_spec(_spec_document(args))
    except (SpecError, JobSourceError, json.JSONDecodeError) as exc:
        failed = TrainerReport(phase="Failed", job_uid=args.job_uid, error=f"invalid spec: {exc}")
        reporter.write(failed, force=True)
        print(redact(f"invalid spec: {exc}"), file=sys.stderr)
        deliver_final_report(reporter)
        return 2
    from kubetune_trainer.runner import RunOptions, run_job

    workdir = Path(args.output_dir or tempfile.mkdtemp(prefix="kubetune-"))
    options = RunOptions(
        job_name=args.job_name,
        reporter=reporter,
        workdir=workdir,
        report_target=args.report,
        namespace=args.namespace,
        report_interval_s=args.report_interval,
        job_uid=args.job_uid,
    )
    try:
        run_job(spec, options)
    except Exception as exc:
        print(redact(f"kubetune trainer failed: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return 1
    return 0


def _spec_document(args: argparse.Namespace) -> Any:
    if args.spec_json is not None:
        return json.loads(args.spec_json)
    namespace = args.namespace or default_namespace()
    return read_own_job(args.job_name, namespace, args.job_uid).get("spec")


if __name__ == "__main__":
    sys.exit(main())
