"""The worker pods' preStop hook, run as kubelet runs it (a separate process): it writes the
notice and waits for the save, returns at once where no training runs, and gives up when the
grace period ends."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubetune_trainer.preemption import (
    ACTIVE_PREFIX,
    PreemptionNotice,
    notice_path,
    request_and_wait,
)

pytestmark = pytest.mark.trainer


def hook(root: Path, wait: float) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "kubetune_trainer.preemption", "--root", str(root)]
    return subprocess.Popen([*command, "--wait", str(wait)], stdout=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_hook_waits_for_the_save_of_the_training_on_its_pod(tmp_path):
    with PreemptionNotice(tmp_path) as training:
        assert not training.requested()
        process = hook(tmp_path, wait=60)
        wait_for(training.requested)
        time.sleep(0.5)
        assert process.poll() is None  # still waiting: nothing saved yet
        training.saved()
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and "saved" in out
    assert not notice_path(tmp_path).exists()  # consumed: a restarted worker trains on


def test_the_hook_returns_at_once_where_no_training_runs(tmp_path):
    (tmp_path / f"{ACTIVE_PREFIX}999999999").write_text("999999999")  # a process long gone
    started = time.monotonic()
    assert request_and_wait(tmp_path, wait_s=60) == "no training on this pod"
    assert time.monotonic() - started < 5


def test_the_hook_gives_up_when_the_grace_period_ends(tmp_path):
    (tmp_path / f"{ACTIVE_PREFIX}{os.getpid()}").write_text(str(os.getpid()))
    assert request_and_wait(tmp_path, wait_s=1, poll_s=0.1) == "no save within 1 s"


def test_a_notice_older_than_the_training_is_not_for_it(tmp_path):
    notice_path(tmp_path).write_text("left by a run on this machine before")
    old = time.time() - 600
    os.utime(notice_path(tmp_path), (old, old))
    with PreemptionNotice(tmp_path) as training:
        assert not training.requested()
        notice_path(tmp_path).touch()
        assert training.requested()
