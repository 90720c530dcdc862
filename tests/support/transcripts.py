"""The RayJob states real KubeRay went through on real pods (recorded by the cluster tier in
tests/fixtures/kuberay), and the check that holds the KubeRay doubles to them.

A recording comes from polling, so it can miss a short state but never invents one. A double
is honest when (1) every state of the recording appears in the double's own history, in the
same order (the double skips nothing real KubeRay shows), and (2) every state the double
writes was seen on real pods in some recording (the double invents nothing).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kuberay"
SUCCESS = "rayjob-success-v1.6.2.json"
APP_FAILED = "rayjob-app-failed-v1.6.2.json"
RETRY = "rayjob-retry-v1.6.2.json"

State = tuple[str, str]
T = TypeVar("T")


def state_of(status: Mapping[str, Any] | None) -> State:
    """A RayJob's (jobDeploymentStatus, jobStatus); KubeRay omits an empty one."""
    status = status or {}
    return (status.get("jobDeploymentStatus") or "", status.get("jobStatus") or "")


def note_change(seen: list[T], current: T) -> None:
    """Append `current` to what was polled when it differs from the last entry."""
    if not seen or seen[-1] != current:
        seen.append(current)


def recorded(name: str) -> list[State]:
    doc = json.loads((FIXTURES / name).read_text())
    return [(deployment, job) for deployment, job in doc["rayjob_states"]]


# A state KubeRay v1.6.2 writes on a retry (rayjob_controller.go: the Ray job's FAILED becomes
# Retrying in the same update, kept while the old cluster is deleted; then New, which is "" for
# both fields, then Initializing) that lasted less than one poll on this node in every run so
# far, so no recording has it. The doubles write it so that the operator's handling of a retry
# is exercised in the fast tiers.
TOO_SHORT_TO_POLL: set[State] = {("Retrying", "FAILED")}


def every_recorded_state() -> set[State]:
    return {state for path in FIXTURES.glob("rayjob-*.json") for state in recorded(path.name)}


def matched_in_order(part: list[State], whole: list[State]) -> int:
    """How many leading states of `part` appear in `whole` in order (len(part): all)."""
    matched = 0
    for state in whole:
        if matched < len(part) and state == part[matched]:
            matched += 1
    return matched


def supersequence(a: list[State], b: list[State]) -> list[State]:
    """The shortest sequence holding both `a` and `b` in order (two polls of one behaviour,
    each missing different short states)."""
    rows, cols = len(a), len(b)
    common = [[0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(rows - 1, -1, -1):
        for j in range(cols - 1, -1, -1):
            common[i][j] = (
                common[i + 1][j + 1] + 1
                if a[i] == b[j]
                else max(common[i + 1][j], common[i][j + 1])
            )
    out, i, j = [], 0, 0
    while i < rows and j < cols:
        if a[i] == b[j]:
            out.append(a[i])
            i, j = i + 1, j + 1
        elif common[i + 1][j] >= common[i][j + 1]:
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out + a[i:] + b[j:]


def differences(history: list[State], name: str) -> list[str]:
    """What keeps `history` (a double's states for one RayJob, in order) from matching the
    recording `name`; empty when it matches."""
    problems = []
    real = recorded(name)
    matched = matched_in_order(real, history)
    if matched < len(real):
        problems.append(
            f"real KubeRay showed {real[matched]} (after {real[:matched]}) and the double"
            f" never did: {history}"
        )
    allowed = every_recorded_state() | TOO_SHORT_TO_POLL
    invented = [state for state in history if state not in allowed]
    if invented:
        problems.append(f"the double wrote states real KubeRay never showed: {invented}")
    return problems


def check_polled(name: str, states: list[State], phases: list[str], what: str, last: State) -> None:
    """States polled on real pods against the recording `name` (in its order, possibly missing
    some, ending in `last`); with KUBETUNE_RECORD_TRANSCRIPTS=1 they are merged into it."""
    path = FIXTURES / name
    known = recorded(name) if path.exists() else []
    if os.environ.get("KUBETUNE_RECORD_TRANSCRIPTS") == "1":
        doc = json.loads(path.read_text()) if path.exists() else {"finetunejob_phases": []}
        doc.update(
            kuberay="v1.6.2",
            example=doc.get("example", what),
            rayjob_states=[list(s) for s in supersequence(known, states)],
            finetunejob_phases=supersequence(doc["finetunejob_phases"], phases),
        )
        path.write_text(json.dumps(doc) + "\n")
        return
    # Polling can miss a short state, never invent one: what we saw is in the recording, in order.
    # A state KubeRay is known to write but no run had polled yet is let through (record it).
    states = [state for state in states if state not in TOO_SHORT_TO_POLL]
    assert matched_in_order(states, known) == len(states), (
        f"states {states} are not the recording's, in its order: {known}"
    )
    assert states[-1] == last, states
