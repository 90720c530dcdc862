"""The RayJob states real KubeRay went through on real pods (recorded by the cluster tier in
tests/fixtures/kuberay), and the check that holds the KubeRay doubles to them.

A recording comes from polling, so it can miss a short state but never invents one. A double
is honest when (1) every state of the recording appears in the double's own history, in the
same order (the double skips nothing real KubeRay shows), and (2) every state the double
writes was seen on real pods in some recording (the double invents nothing).
"""

from __future__ import annotations

import json
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kuberay"
SUCCESS = "rayjob-success-v1.6.2.json"
APP_FAILED = "rayjob-app-failed-v1.6.2.json"

State = tuple[str, str]


def recorded(name: str) -> list[State]:
    doc = json.loads((FIXTURES / name).read_text())
    return [(deployment, job) for deployment, job in doc["rayjob_states"]]


def every_recorded_state() -> set[State]:
    return {state for path in FIXTURES.glob("rayjob-*.json") for state in recorded(path.name)}


def differences(history: list[State], name: str) -> list[str]:
    """What keeps `history` (a double's states for one RayJob, in order) from matching the
    recording `name`; empty when it matches."""
    problems = []
    real = recorded(name)
    position = 0
    for state in history:
        if position < len(real) and state == real[position]:
            position += 1
    if position < len(real):
        problems.append(
            f"real KubeRay showed {real[position]} (after {real[:position]}) and the"
            f" double never did: {history}"
        )
    invented = [state for state in history if state not in every_recorded_state()]
    if invented:
        problems.append(f"the double wrote states real KubeRay never showed: {invented}")
    return problems
