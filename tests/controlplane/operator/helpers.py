"""Helpers for operator control-plane tests: job manifests, waiting, reading state."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

REPO_ROOT = Path(__file__).resolve().parents[3]
FTJ = ("kubetune.dev", "v1alpha1")
FTJS = "finetunejobs"
RAY = ("ray.io", "v1")
RAYJOBS = "rayjobs"
T = TypeVar("T")


def job_manifest(name: str, **spec_overrides: Any) -> dict[str, Any]:
    """The 7B GSM8k example (2 x g5.48xlarge) under another name, with spec overrides."""
    doc: dict[str, Any] = yaml.safe_load(
        (REPO_ROOT / "examples" / "gsm8k-llama2-7b.yaml").read_text()
    )
    doc = copy.deepcopy(doc)
    doc["metadata"] = {"name": name}
    doc["spec"].update(spec_overrides)
    return doc


def wait_for(
    check: Callable[[], T | None],
    timeout: float = 30,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except ApiException as error:
            if error.status != 404:
                raise
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def create_job(custom: client.CustomObjectsApi, namespace: str, doc: dict[str, Any]) -> None:
    custom.create_namespaced_custom_object(*FTJ, namespace, FTJS, doc)


def get_job(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(*FTJ, namespace, FTJS, name))


def status_of(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return dict(get_job(custom, namespace, name).get("status") or {})


def wait_phase(
    custom: client.CustomObjectsApi, namespace: str, name: str, phase: str, timeout: float = 40
) -> dict[str, Any]:
    return wait_for(
        lambda: (s := status_of(custom, namespace, name)).get("phase") == phase and s,
        timeout,
        what=f"{name} phase {phase}",
    )


def rayjobs(custom: client.CustomObjectsApi, namespace: str) -> list[dict[str, Any]]:
    return list(custom.list_namespaced_custom_object(*RAY, namespace, RAYJOBS)["items"])


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


def events_for(core: client.CoreV1Api, namespace: str, name: str) -> list[client.CoreV1Event]:
    items = core.list_namespaced_event(namespace).items
    return [
        e
        for e in items
        if e.involved_object.name == name and e.involved_object.kind == "FineTuneJob"
    ]
