"""Jobs whose pods can never start, on real pods: the real scheduler, kubelet and KubeRay.

Two variants of the local-cluster example run side by side, each with a short pre-running
deadline: one whose pods require a node label no node has (the scheduler marks them
Unschedulable), one whose image is on no registry the node can reach (the kubelet reports
ErrImagePull, then ImagePullBackOff). Both must end Failed within the deadline with the cause
as the reason and the scheduler's or kubelet's words in the message, not a generic deadline.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(5400)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "local-cluster.yaml"
DEADLINE_S = 40
SMALL = {"cpu": "100m", "memory": "256Mi"}  # they never run: leave the node's CPUs alone
# A registry address nothing listens on: the pull fails at once, on any network.
ABSENT_IMAGE = "127.0.0.1:9/kubetune/absent:1"


def _variant(name: str, compute: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    doc["metadata"] = {"name": name}
    spec = doc["spec"]
    # Workers sized as the plan needs (it refuses less); requests the node can give.
    spec["compute"]["nodePool"].update(cpu="100m", memory="2Gi")
    spec["compute"]["head"] = dict(SMALL)
    spec["compute"]["submitter"] = dict(SMALL)
    for key, value in compute.items():
        target = spec["compute"]
        *path, last = key.split(".")
        for part in path:
            target = target.setdefault(part, {})
        target[last] = value
    spec["runPolicy"]["preRunningDeadlineSeconds"] = DEADLINE_S
    return doc


JOBS = {
    "never-scheduled": (
        {
            "nodePool.nodeSelector": {"kubetune.dev/pool": "absent"},
            "head.nodeSelector": {"kubetune.dev/pool": "absent"},
        },
        "Unschedulable",
        "didn't match Pod's node affinity/selector",
    ),
    "never-pulled": ({"image": ABSENT_IMAGE}, "ImagePullFailed", ABSENT_IMAGE),
}


def _status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    proc = cluster.kubectl("get", "finetunejob", name, "-o", "json", check=False)
    return json.loads(proc.stdout).get("status", {}) if proc.returncode == 0 else {}


def test_jobs_whose_pods_never_start_fail_with_their_cause(local_cluster: LocalCluster) -> None:
    cluster = local_cluster
    for name, (compute, _, _) in JOBS.items():
        cluster.kubectl("delete", "finetunejob", name, "--ignore-not-found", "--wait=true")
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(_variant(name, compute)))
    started = time.monotonic()
    finished: dict[str, tuple[dict[str, Any], float]] = {}
    while len(finished) < len(JOBS) and time.monotonic() - started < DEADLINE_S + 120:
        for name in JOBS:
            status = _status(cluster, name)
            if name not in finished and status.get("phase") == "Failed":
                finished[name] = (status, time.monotonic() - started)
        time.sleep(1)
    pods = cluster.kubectl("get", "pods", "-o", "wide", check=False).stdout
    try:
        for name, (_, reason, words) in JOBS.items():
            assert name in finished, f"{name} never failed: {_status(cluster, name)}\n{pods}"
            status, seconds = finished[name]
            failed = next(c for c in status["conditions"] if c["type"] == "Failed")
            assert failed["reason"] == reason, status["message"]
            assert words in status["message"] and "Next: " in status["message"]
            # KubeRay counts the deadline from the RayJob's start; the verdict follows it.
            assert seconds < DEADLINE_S + 60, f"{name} took {seconds:.0f} s"
            print(f"{name}: Failed, reason {reason}, after {seconds:.0f} s")
    finally:
        for name in JOBS:
            cluster.kubectl("delete", "finetunejob", name, "--ignore-not-found", "--wait=true")
