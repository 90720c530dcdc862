"""Cluster entrypoint (the command the operator puts in the RayJob):

    python -m kubetune_trainer.entrypoint --spec-json '<FineTuneJobSpec wire JSON>' \\
        --job-name NAME [--namespace NS] --report configmap:NAME|file:PATH [--output-dir DIR]

Runs the whole job (all stages, evaluation) and writes TrainerReport documents through the
reporter; on failure the last report has phase Failed and the error, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kubetune.api.report import TrainerReport
from kubetune.validation import SpecError, parse_spec
from kubetune_trainer.reporting import ThrottledReporter, redact, reporter_from_target

REPORT_INTERVAL_S = 10.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune_trainer.entrypoint", description="Run one FineTuneJob on this Ray cluster."
    )
    parser.add_argument("--spec-json", required=True, help="FineTuneJobSpec as JSON (wire form).")
    parser.add_argument("--job-name", required=True, help="FineTuneJob name (names the Ray runs).")
    parser.add_argument("--namespace", default=None, help="Namespace of the report ConfigMap.")
    parser.add_argument("--report", required=True, help="configmap:NAME or file:PATH.")
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
        spec = parse_spec(json.loads(args.spec_json))
    except (SpecError, json.JSONDecodeError) as exc:
        reporter.write(TrainerReport(phase="Failed", error=f"invalid spec: {exc}"), force=True)
        print(redact(f"invalid spec: {exc}"), file=sys.stderr)
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
    )
    try:
        run_job(spec, options)
    except Exception as exc:
        print(redact(f"kubetune trainer failed: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
