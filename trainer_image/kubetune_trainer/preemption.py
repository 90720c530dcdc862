"""Save on preemption: the worker pod's preStop hook asks the training to save, and waits.

How the notice reaches the training. Kubernetes sends SIGTERM to the container's PID 1, the
`ray start --block` that KubeRay runs; Ray then stops its raylet and kills the worker
processes, and the training function runs in a thread of such a worker, where Python cannot
install a signal handler anyway. So the notice does not travel as a signal: the worker pods
have a preStop hook (`python -m kubetune_trainer.preemption`), which kubelet runs *before* the
SIGTERM, within the pod's grace period. The hook writes a notice file on the pod's scratch
volume and waits; the training loop looks for it at every optimizer-step boundary and shares
what it saw in the all-reduce it makes there anyway, so all ranks save the same step together
(a ZeRO-3 save is collective), commit, write the "saved" file and stop. The hook then returns,
kubelet sends the SIGTERM, and the run resumes from that step on the next workers.

When the grace period is too short: the save never commits, and the run resumes from the
previous committed point (the last epoch's end or an earlier preemption save): the steps since
then are trained again, nothing half-written is ever read.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from kubetune.api.pods import PREEMPT_GRACE_SECONDS, PREEMPT_HOOK_MARGIN_SECONDS
from kubetune_trainer.storage import scratch_root

NOTICE = "kubetune-preempt-notice"
SAVED = "kubetune-preempt-saved"
ACTIVE_PREFIX = "kubetune-training-"
DEFAULT_WAIT_S = float(PREEMPT_GRACE_SECONDS - PREEMPT_HOOK_MARGIN_SECONDS)


def notice_path(root: Path | None = None) -> Path:
    return (root or scratch_root()) / NOTICE


class PreemptionNotice:
    """What one worker checks at each step boundary: a notice newer than its own start (a
    notice left by an earlier run on a machine that lived on is not for it)."""

    def __init__(self, root: Path | None = None):
        self.root = root or scratch_root()
        self.started = time.time()
        self.active = self.root / f"{ACTIVE_PREFIX}{os.getpid()}"

    def __enter__(self) -> PreemptionNotice:
        self.active.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc: object) -> None:
        self.active.unlink(missing_ok=True)

    def requested(self) -> bool:
        try:
            return notice_path(self.root).stat().st_mtime >= self.started - 1
        except FileNotFoundError:
            return False

    def saved(self) -> None:
        """Tell the waiting hook the save is committed; the notice is consumed."""
        (self.root / SAVED).write_text(str(time.time()))
        notice_path(self.root).unlink(missing_ok=True)


def training_active(root: Path) -> bool:
    """Whether a training process on this pod is alive (its marker names its pid)."""
    for marker in root.glob(f"{ACTIVE_PREFIX}*"):
        try:
            os.kill(int(marker.read_text()), 0)
            return True
        except (ValueError, ProcessLookupError, FileNotFoundError):
            marker.unlink(missing_ok=True)
        except PermissionError:
            return True
    return False


def request_and_wait(root: Path, wait_s: float, poll_s: float = 0.5) -> str:
    """The preStop hook: write the notice, wait for the save (or for no training to be left,
    or for the time to run out); says which."""
    root.mkdir(parents=True, exist_ok=True)
    asked = time.time()
    notice_path(root).write_text(str(asked))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        saved = root / SAVED
        if saved.exists() and saved.stat().st_mtime >= asked - 1:
            return "saved"
        if not training_active(root):
            return "no training on this pod"
        time.sleep(poll_s)
    return f"no save within {wait_s:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, help="seconds at most")
    parser.add_argument("--root", type=Path, default=None, help="the pod's scratch folder")
    args = parser.parse_args(argv)
    outcome = request_and_wait(args.root or scratch_root(), args.wait)
    print(f"kubetune preemption hook: {outcome}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
