"""A stage's durable progress in the job's storage: committed checkpoints and resume points.

Layout of one stage's folder, `<storageURI>/<job>/<stage>/`:

    epoch-003/               consolidated HF checkpoint, only for epochs that can be kept
    resume/step-0000042/     every rank's optimizer, scheduler and RNG state, and the stage's
                             state (epochs, steps, data position, learning curve so far)
    steps.jsonl              the stage's full per-step series
    stage.json               the finished stage's state: a later attempt does not retrain it

A folder counts only once its commit marker is written, last, after every rank's files: a
save cut short (a node lost mid-upload, a grace period too short) is never resumed from or
reported. Only the latest resume point is kept: older ones are deleted once a newer one is
committed, and the whole `resume/` folder once the stage is finished.
"""

from __future__ import annotations

import json
from typing import Any

from kubetune_trainer import storage

COMMIT = "kubetune-commit.json"
RESUME = "resume"
FINISHED = "stage.json"
STEP_PREFIX = "step-"


def commit(uri: str, facts: dict[str, Any]) -> None:
    """Mark a folder complete; the last write of a save."""
    storage.write_text(storage.join(uri, COMMIT), json.dumps(facts, sort_keys=True))


def committed(uri: str) -> bool:
    return storage.read_text(storage.join(uri, COMMIT)) is not None


def resume_folder(stage_uri: str) -> str:
    return storage.join(stage_uri, RESUME)


def resume_point_uri(stage_uri: str, step: int, epoch: int, micro_step: int) -> str:
    """One name per data position: the same step saved twice (an epoch's end, then a
    preemption before the next step) is the same point, never a rewrite of another."""
    return storage.join(
        resume_folder(stage_uri), f"{STEP_PREFIX}{step:07d}-epoch-{epoch:03d}-{micro_step:07d}"
    )


def resume_points(stage_uri: str) -> list[str]:
    """Every resume folder of the stage, committed or not, oldest first."""
    names = storage.list_folders(resume_folder(stage_uri))
    return [storage.join(resume_folder(stage_uri), n) for n in names if n.startswith(STEP_PREFIX)]


def latest_resume_point(stage_uri: str) -> str | None:
    """The newest committed resume point of the stage, if any."""
    for uri in reversed(resume_points(stage_uri)):
        if committed(uri):
            return uri
    return None


def prune_resume_points(stage_uri: str, keep: str | None) -> list[str]:
    """Delete every resume folder but `keep` (older points, and saves that never committed);
    returns what was deleted."""
    doomed = [uri for uri in resume_points(stage_uri) if uri != keep]
    for uri in doomed:
        storage.delete_dir(uri)
    return doomed


def finish_stage(stage_uri: str, state: dict[str, Any]) -> None:
    """Record the finished stage (its final state), then drop its resume state."""
    storage.write_text(storage.join(stage_uri, FINISHED), json.dumps(state))
    storage.delete_dir(resume_folder(stage_uri))


def finished_stage(stage_uri: str) -> dict[str, Any] | None:
    """The final state of a stage an earlier attempt finished, or None."""
    text = storage.read_text(storage.join(stage_uri, FINISHED))
    return None if text is None else dict(json.loads(text))
