"""What the operator accepts from a trainer's report before any of it reaches status. Pure.

The FineTuneJobReport is writable by the job's Ray pods, which run user-chosen images and
code, so its contents are input, not truth:
- it must name this FineTuneJob incarnation (`jobUid`): a report of an earlier job with the
  same name, or one forging another job's uid, is ignored;
- every checkpoint it names must lie under the job's own folder of its storage,
  `<spec.output.storageURI>/<uid>` (status.outputURI): not another job's, even one sharing
  the storageURI;
- sizes are bounded by the report models (lists, texts), and fields a newer trainer added
  are set aside rather than failing the whole report (`parse_report_json`).
A report that cannot be read or breaks a rule ends the job as InvalidReport.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from kubetune.api.report import REPORT_SCHEMA_VERSION, TrainerReport, parse_report_json
from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.builders.meta import uid_of
from kubetune.status_mapping import Problem, job_storage


@dataclass(frozen=True)
class ReportReading:
    """What one report document amounts to for one job."""

    report: TrainerReport | None = None  # None: nothing usable (absent, ignored or refused)
    problem: Problem | None = None  # set when the report is refused (InvalidReport)
    note: str = ""  # why a report was ignored, or which unknown fields were set aside


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "report"
    return f"{where}: {first['msg']}"


def under(uri: str, root: str) -> bool:
    """Whether `uri` is `root` or inside it (by path segment, so s3://b/run2 is not in
    s3://b/run)."""
    root = root.rstrip("/")
    return uri == root or (uri.startswith(root + "/") and "/../" not in uri[len(root) :] + "/")


def checkpoint_problems(report: TrainerReport, root: str) -> list[str]:
    named = [("bestCheckpoint.uri", report.best_checkpoint.uri)] if report.best_checkpoint else []
    named += [
        (f"epochs[{i}].checkpoint", e.checkpoint)
        for i, e in enumerate(report.epochs)
        if e.checkpoint
    ]
    return [
        f"{where} is outside this job's storage {root}"
        for where, uri in named
        if not under(uri, root)
    ]


def read_report(text: str | None, job: FineTuneJob) -> ReportReading:
    """The usable report in `text` for `job`, or why there is none."""
    if not text:
        return ReportReading()
    try:
        parsed = parse_report_json(text)
    except ValidationError as error:
        return _refused(f"the trainer's report cannot be read: {_first_error(error)}")
    except (ValueError, TypeError, RecursionError) as error:  # hostile nesting too
        return _refused(f"the trainer's report is not a JSON report: {type(error).__name__}")
    report = parsed.report
    note = f"report fields this operator does not know, set aside: {', '.join(parsed.ignored)}"
    note = note if parsed.ignored else ""
    uid = uid_of(job)
    if uid is not None and report.job_uid is None:
        return _refused(
            f"the trainer's report names no FineTuneJob uid (report schema "
            f"{report.schema_version}; this operator reads schema {REPORT_SCHEMA_VERSION})"
        )
    if uid is not None and report.job_uid != uid:
        return ReportReading(note=f"ignored a report of another FineTuneJob (uid {report.job_uid})")
    problems = checkpoint_problems(report, job_storage(job, report))
    if problems:
        return _refused("the trainer's report is refused: " + "; ".join(problems))
    return ReportReading(report=report, note=note)


def _refused(message: str) -> ReportReading:
    return ReportReading(problem=Problem("InvalidReport", message))
