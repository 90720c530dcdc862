"""Reporters: atomic file writes, FineTuneJobReport patches, throttling, secret redaction."""

from __future__ import annotations

import json
import time

import pytest

from kubetune.api.report import REPORT_FIELD, REPORT_PLURAL, TrainerReport
from kubetune_trainer.reporting import (
    FileReporter,
    ObjectReporter,
    ThrottledReporter,
    redact,
    reporter_from_target,
)

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Recorder:
    def __init__(self):
        self.reports = []

    def write(self, report):
        self.reports.append(report.model_copy(deep=True))


def test_file_reporter_writes_camelcase_json(tmp_path):
    FileReporter(tmp_path / "r" / "report.json").write(
        TrainerReport(phase="Training", total_steps=9)
    )
    document = json.loads((tmp_path / "r" / "report.json").read_text())
    assert document["phase"] == "Training" and document["totalSteps"] == 9
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["report.json"]


def test_throttle_lets_phase_changes_and_forced_writes_through():
    inner, clock = Recorder(), FakeClock()
    reporter = ThrottledReporter(inner, 10.0, clock)
    assert reporter.write(TrainerReport(phase="Training", step=1))
    clock.now = 3
    assert not reporter.write(TrainerReport(phase="Training", step=2))
    assert reporter.write(TrainerReport(phase="Training", step=3), force=True)
    assert reporter.write(TrainerReport(phase="Evaluating"))
    clock.now = 14
    assert reporter.write(TrainerReport(phase="Evaluating", step=5))
    assert reporter.flush(10)
    assert [r.step for r in inner.reports] == [1, 3, 0, 5]
    assert all(r.updated_at for r in inner.reports)


class Flaky(Recorder):
    """The API server answering, then down (or hanging), then back."""

    def __init__(self):
        super().__init__()
        self.down = False
        self.hang_s = 0.0

    def write(self, report):
        time.sleep(self.hang_s)
        if self.down:
            raise ConnectionError("connection refused: the API server is down")
        super().write(report)


def test_a_hung_api_server_never_holds_up_training():
    inner = Flaky()
    inner.hang_s = 3.0  # a write that takes as long as a read timeout
    reporter = ThrottledReporter(inner, 0)
    started = time.monotonic()
    for step in range(1, 51):  # fifty optimizer steps, each writing progress
        reporter.write(TrainerReport(phase="Training", step=step))
    assert time.monotonic() - started < 1.0
    assert reporter.flush(30)
    # Progress nobody saw yet is replaced by newer progress: the latest arrives, not 50 writes.
    assert inner.reports[-1].step == 50 and len(inner.reports) <= 3


def test_an_outage_loses_nothing_and_the_latest_state_gets_through(capsys):
    inner = Flaky()
    reporter = ThrottledReporter(inner, 0, backoff_s=0.2, backoff_max_s=0.4)
    reporter.write(TrainerReport(phase="Training", step=1))
    assert reporter.flush(10)
    inner.down = True
    reporter.write(TrainerReport(phase="Training", step=2))  # no exception, no wait
    reporter.write(TrainerReport(phase="Evaluating", step=3), force=True)
    assert not reporter.flush(1.5)  # undelivered while the API server is down
    assert "report write failed (1 in a row), sent again in 0 s" in capsys.readouterr().err
    # It kept trying, backing off 0.2 s, then 0.4 s: 4 or 5 tries in 1.5 s, no more.
    assert 3 <= reporter.failures <= 5
    reporter.write(TrainerReport(phase="Evaluating", step=4))
    inner.down = False
    assert reporter.flush(10)
    assert [r.step for r in inner.reports] == [1, 4]  # back: only the latest state
    reporter.write(TrainerReport(phase="Succeeded", step=5), force=True)
    assert reporter.flush(10)
    assert [r.step for r in inner.reports] == [1, 4, 5] and reporter.failures == 0
    assert "report delivered after" in capsys.readouterr().out


def test_forced_writes_arrive_in_order():
    inner = Flaky()
    inner.hang_s = 0.2
    reporter = ThrottledReporter(inner, 0)
    for step, phase in enumerate(("Preparing", "Training", "Training", "Evaluating"), start=1):
        reporter.write(TrainerReport(phase=phase, step=step), force=True)
    reporter.write(TrainerReport(phase="Evaluating", step=9))
    reporter.write(TrainerReport(phase="Succeeded", step=10), force=True)
    # (the queue still holds 3 and 4: each forced write takes 0.2 s to send)
    assert reporter.flush(30)
    # Every forced write in order; progress (9) not sent yet gives way to the next write.
    assert [r.step for r in inner.reports] == [1, 2, 3, 4, 10]


def test_secret_values_are_redacted(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_supersecret123")
    assert "hf_supersecret123" not in redact("401 for token hf_supersecret123")
    inner = Recorder()
    reporter = ThrottledReporter(inner)
    reporter.write(TrainerReport(phase="Failed", error="bad hf_supersecret123"))
    assert reporter.flush(10)
    assert "supersecret" not in inner.reports[0].error


def test_object_reporter_patches_the_report_field():
    calls = []

    class FakeApi:
        def patch_namespaced_custom_object(
            self, group, version, namespace, plural, name, body, _request_timeout
        ):
            assert _request_timeout, "every request has a timeout"
            calls.append((group, plural, name, namespace, body))

    ObjectReporter("job-report", "team-a", api=FakeApi()).write(TrainerReport(phase="Succeeded"))
    group, plural, name, namespace, body = calls[0]
    assert (group, plural, name, namespace) == (
        "kubetune.dev",
        REPORT_PLURAL,
        "job-report",
        "team-a",
    )
    assert json.loads(body[REPORT_FIELD])["phase"] == "Succeeded"


def test_report_targets(tmp_path):
    assert isinstance(reporter_from_target(f"file:{tmp_path}/x.json"), FileReporter)
    assert isinstance(reporter_from_target("finetunejobreport:abc", "ns"), ObjectReporter)
    with pytest.raises(ValueError, match="unknown report target kind 'configmap'"):
        reporter_from_target("configmap:abc")
    with pytest.raises(ValueError):
        reporter_from_target("abc")


class FlakyApi:
    """Fails with the given HTTP statuses, then accepts the patch."""

    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.patches = 0

    def patch_namespaced_custom_object(self, *args, _request_timeout=None):
        if self.statuses:
            error = RuntimeError("api error")
            error.status = self.statuses.pop(0)
            raise error
        self.patches += 1


def test_object_reporter_retries_while_its_rbac_catches_up(monkeypatch):
    monkeypatch.setattr("kubetune_trainer.reporting.RETRY_DELAYS_S", (0, 0, 0))
    api = FlakyApi([403, 404, 503])
    ObjectReporter("job-report", "team-a", api=api).write(TrainerReport())
    assert api.patches == 1


@pytest.mark.parametrize(
    "statuses", [[422], [403, 403, 403, 403]], ids=["not-retryable", "gives-up"]
)
def test_object_reporter_raises_what_retrying_cannot_fix(monkeypatch, statuses):
    monkeypatch.setattr("kubetune_trainer.reporting.RETRY_DELAYS_S", (0, 0, 0))
    api = FlakyApi(statuses)
    with pytest.raises(RuntimeError):
        ObjectReporter("job-report", "team-a", api=api).write(TrainerReport())
    assert api.patches == 0
