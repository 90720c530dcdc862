"""Where the trainer's report goes: a file (kubetune run) or the job's FineTuneJobReport (cluster).

Both write the whole `TrainerReport` document (camelCase JSON text); the operator reads the
FineTuneJobReport and mirrors it into FineTuneJob.status. Writes are throttled (at most one
per `min_interval_s`) except forced ones: phase changes, epoch ends and the final report.
Error text is redacted of secret values from the environment before it is written anywhere.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from kubetune.api.base import cut_text
from kubetune.api.credentials import redact as redact_credentials
from kubetune.api.report import (
    REPORT_FIELD,
    REPORT_PLURAL,
    REPORT_SINGULAR,
    REPORT_TEXT_LIMIT,
    Heartbeat,
    TrainerReport,
)
from kubetune.api.v1alpha1 import GROUP, VERSION

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|CREDENTIAL|ACCESS_KEY|API_KEY", re.I)
DEFAULT_MIN_INTERVAL_S = 10.0
FAILED_WRITE_BACKOFF_S = 10.0
FAILED_WRITE_BACKOFF_MAX_S = 300.0
OBJECT_TARGET = REPORT_SINGULAR  # --report finetunejobreport:NAME
# The operator creates the RayJob first (the cluster starts sooner) and the
# FineTuneJobReport and its RBAC right after, so a fast first write may see 403/404 for a moment;
# API server hiccups (429, 5xx, connection errors) are retried the same way.
RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)
RETRYABLE_STATUS = frozenset({403, 404, 409, 429, 500, 502, 503, 504})
REQUEST_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds: a hung API server must not hang training
OUTAGE_RETRY_S = 10.0  # between tries once the short retries are spent and the API is still down
# The last report holds the run's results, which exist nowhere else the operator reads: the
# process waits this long for it to be delivered across an API outage before it exits.
FINAL_REPORT_WAIT_S = 600.0
T = TypeVar("T")


class Reporter(Protocol):
    def write(self, report: TrainerReport) -> None: ...


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def beat(report: TrainerReport, activity: str, at: str | None = None) -> None:
    """Progress the operator's stall clock counts from (kubetune.status_mapping.stall_due):
    now, or `at` when the progress was made elsewhere (an evaluation task's batch)."""
    report.heartbeat = Heartbeat(at=at or now_rfc3339(), step=report.step, activity=activity)


def redact(text: str, environ: dict[str, str] | None = None) -> str:
    """Replace the values of secret-looking environment variables (HF_TOKEN, AWS_SECRET_...,
    RAY_AUTH_TOKEN), then anything credential-shaped (kubetune.api.credentials)."""
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if SECRET_NAME.search(name) and len(value) >= 6:
            text = text.replace(value, f"<{name} redacted>")
    return redact_credentials(text)


def render(report: TrainerReport) -> str:
    return json.dumps(report.to_wire(), indent=2, sort_keys=True)


class FileReporter:
    """Writes the report to a file atomically (a reader never sees half a document)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def write(self, report: TrainerReport) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".report-", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            handle.write(render(report))
        os.replace(tmp, self.path)


def load_api_client() -> Any:
    """The pod's own ServiceAccount in a cluster, else $KUBECONFIG (tests, a laptop)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def with_retries(call: Callable[[], T], outage_wait_s: float = 0.0) -> T:
    """`call()`, retried on the answers a fresh job can see for a moment (RBAC not there
    yet) and on API server hiccups; other errors are raised at once. While the API server does
    not answer at all (connection refused, 5xx), tries go on every OUTAGE_RETRY_S for up to
    `outage_wait_s` (a trainer that starts during an API server restart waits it out)."""
    give_up_at = time.monotonic() + outage_wait_s
    short_delays = iter(RETRY_DELAYS_S)
    while True:
        try:
            return call()
        except Exception as error:  # ApiException or a connection error
            status = getattr(error, "status", None)
            if status is not None and status not in RETRYABLE_STATUS:
                raise
            delay = next(short_delays, None)
            if delay is None:
                api_down = status is None or status >= 500
                if not api_down or time.monotonic() >= give_up_at:
                    raise
                delay = OUTAGE_RETRY_S
            time.sleep(delay)


class ObjectReporter:
    """Patches field `report` of the FineTuneJobReport the operator created for this job (the
    trainer's service account may update only that object)."""

    def __init__(self, name: str, namespace: str | None = None, api: Any = None):
        self.name = name
        self.namespace = namespace or default_namespace()
        self._api = api

    def _custom_api(self) -> Any:
        if self._api is None:
            from kubernetes import client

            self._api = client.CustomObjectsApi(load_api_client())
        return self._api

    def write(self, report: TrainerReport) -> None:
        body = {REPORT_FIELD: render(report)}
        with_retries(
            lambda: self._custom_api().patch_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                REPORT_PLURAL,
                self.name,
                body,
                _request_timeout=REQUEST_TIMEOUT,
            )
        )


def default_namespace() -> str:
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return os.environ.get("POD_NAMESPACE", "default")


class ThrottledReporter:
    """Sends the report from a thread of its own, so a slow or absent API server never holds
    up training: `write` returns at once. At most one write per `min_interval_s`, unless forced
    or the phase changed; stamps `updatedAt`.

    Forced writes (phase changes, stage and epoch ends) go out in order; a progress write not
    sent yet is replaced by the next write. A send that fails (the API server down, the report
    object deleted, a refusal) is logged and only the latest state is sent again, after a wait
    that doubles from `backoff_s` up to `backoff_max_s`, for as long as it takes: an API outage
    of minutes costs the operator's view some minutes, never the run or its results. `flush`
    waits until everything written is delivered (the driver's final report: the process must
    not exit before it is).
    """

    def __init__(
        self,
        inner: Reporter,
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        backoff_s: float = FAILED_WRITE_BACKOFF_S,
        backoff_max_s: float = FAILED_WRITE_BACKOFF_MAX_S,
    ):
        self.inner = inner
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self._last: float | None = None
        self._last_phase: str | None = None
        self.failures = 0  # failed sends in a row
        self._lock = threading.Condition()
        self._queue: list[tuple[TrainerReport, bool]] = []  # (report, forced), oldest first
        self._sending = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def write(self, report: TrainerReport, force: bool = False) -> bool:
        """Queue `report` for sending if a write is due; True when queued."""
        now = self.clock()
        due = self._last is None or now - self._last >= self.min_interval_s
        forced = force or report.phase != self._last_phase
        if not (forced or due):
            return False
        report.updated_at = now_rfc3339()
        if report.error:
            report.error = cut_text(redact(report.error), REPORT_TEXT_LIMIT)
        self._last, self._last_phase = now, report.phase
        with self._lock:
            if self.failures:
                self._queue.clear()  # while failing, only the latest state is worth sending
            elif self._queue and not self._queue[-1][1]:
                self._queue.pop()  # progress nobody saw yet: the newer state says it all
            self._queue.append((report.model_copy(deep=True), forced))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._send_forever, name="kubetune-report", daemon=True
                )
                self._thread.start()
            self._lock.notify_all()
        return True

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything written was delivered; False if still undelivered."""
        with self._lock:
            return self._lock.wait_for(
                lambda: not self._queue and not self._sending, timeout=timeout_s
            )

    def close(self) -> None:
        """Stop sending: what is not delivered yet is dropped (a worker's progress; the driver
        reports each stage's end itself)."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def _send_forever(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: bool(self._queue) or self._closed)
                if self._closed:
                    return
                (report, forced), self._sending = self._queue.pop(0), True
            failed = self._send(report)
            with self._lock:
                self._sending = False
                if failed:  # only the latest state is worth sending again
                    self._queue = [self._queue[-1] if self._queue else (report, forced)]
                self._lock.notify_all()
                if failed:
                    self._lock.wait_for(lambda: self._closed, timeout=self._backoff())

    def _send(self, report: TrainerReport) -> bool:
        """One try; True when it failed (logged)."""
        report.updated_at = now_rfc3339()
        try:
            self.inner.write(report)
        except Exception as error:  # the run is worth more than one report
            self.failures += 1
            print(
                redact(
                    f"kubetune: report write failed ({self.failures} in a row), sent again "
                    f"in {self._backoff():.0f} s: {type(error).__name__}: {error}"
                )[:1000],
                file=sys.stderr,
                flush=True,
            )
            return True
        if self.failures:
            print(f"kubetune: report delivered after {self.failures} failed writes", flush=True)
        self.failures = 0
        return False

    def _backoff(self) -> float:
        return min(self.backoff_s * 2 ** max(self.failures - 1, 0), self.backoff_max_s)


def deliver_final_report(reporter: ThrottledReporter) -> None:
    """Wait for the last report to reach the API server, across an outage of up to
    FINAL_REPORT_WAIT_S (the process must not exit with its results undelivered)."""
    if not reporter.flush(FINAL_REPORT_WAIT_S):
        print(
            f"kubetune: the final report was not delivered within {FINAL_REPORT_WAIT_S:.0f} s",
            file=sys.stderr,
        )


def reporter_from_target(target: str, namespace: str | None = None) -> Reporter:
    """`finetunejobreport:NAME` or `file:PATH` (the entrypoint's --report argument)."""
    kind, _, value = target.partition(":")
    if not value:
        raise ValueError(f"--report must be {OBJECT_TARGET}:NAME or file:PATH, got {target!r}")
    if kind == "file":
        return FileReporter(Path(value))
    if kind == OBJECT_TARGET:
        return ObjectReporter(value, namespace)
    raise ValueError(f"unknown report target kind {kind!r} (use {OBJECT_TARGET}: or file:)")
