"""Benchmark: N FineTuneJobs applied at once against the test control plane.

Measures, with the operator running as in production (a subprocess, `kubetune.controller.runner`):
- create -> RayJob latency: from the create call returning to the RayJob's ADDED watch event
  (p50 / p99 / max), and until every job shows phase Pending;
- API writes per job, counted by the API server itself (`apiserver_request_total`, writes =
  POST/PUT/PATCH/DELETE/APPLY), minus the benchmark's own FineTuneJob creates;
- operator RSS (VmRSS now and VmHWM peak) from /proc.

- a baseline measured in the same run, on the same control plane: a bare client doing the
  same work with the same parallelism (per job: create the FineTuneJob, its RayJob and report
  channel, patch its status to Pending, post an event), so the operator's times are reported
  as ratios to what the API server allows on this machine;
- single-job create -> RayJob on an idle control plane (jobs created one at a time).

Usage: python bench/bench_operator.py [--jobs 200] [--threads 16] [--singles 20]
Targets: <= 8 writes per job, RSS < 200 MB (issue 3); time to all RayJobs <= 1.2x and to all
Pending <= 1.5x the bare client, single-job create -> RayJob p50 < 50 ms (issue 9).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import ssl
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

import yaml  # noqa: E402
from kubernetes import client, config, watch  # noqa: E402

from kubetune.api.v1alpha1 import FineTuneJob  # noqa: E402
from kubetune.builders.render import owned_objects  # noqa: E402
from kubetune.config import OperatorConfig  # noqa: E402
from kubetune.controller.kube import Kube  # noqa: E402
from tests.support.controlplane import ControlPlane, ensure_binaries  # noqa: E402
from tests.support.operator_process import OperatorProcess  # noqa: E402

WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY"}
METRIC = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def write_counts(cp: ControlPlane) -> Counter[str]:
    """Writes per resource[/subresource] so far, from the API server's own metrics."""
    request = urllib.request.Request(
        f"{cp.server}/metrics", headers={"Authorization": f"Bearer {cp.token}"}
    )
    context = ssl.create_default_context(cafile=str(cp.ca_path))
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        match = METRIC.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("verb") in WRITE_VERBS:
            key = labels.get("resource", "") + (
                f"/{labels['subresource']}" if labels.get("subresource") else ""
            )
            counts[key] += int(float(match["value"]))
    return counts


def job_doc(name: str, example: str = "gsm8k-llama2-13b") -> dict[str, Any]:
    """An example manifest under another name."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / f"{example}.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["metadata"] = {"name": name}
    return doc


def watch_rayjobs(
    api: client.ApiClient, namespace: str, seen: dict[str, float], stop: threading.Event
) -> None:
    custom = client.CustomObjectsApi(api)
    while not stop.is_set():
        w = watch.Watch()
        try:
            for event in w.stream(
                custom.list_namespaced_custom_object,
                "ray.io",
                "v1",
                namespace,
                "rayjobs",
                timeout_seconds=60,
            ):
                if event["type"] == "ADDED":
                    seen.setdefault(event["object"]["metadata"]["name"], time.monotonic())
                if stop.is_set():
                    w.stop()
        except Exception:  # a dropped watch is re-opened; ADDED replays are de-duplicated
            time.sleep(0.1)


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def new_namespace(api: client.ApiClient, prefix: str) -> str:
    namespace = f"{prefix}-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
    )
    return namespace


def run(jobs: int, threads: int, singles: int, crds: list[Path]) -> dict[str, Any]:
    with ControlPlane(ensure_binaries()) as cp:
        cp.install_crds(crds + sorted((ROOT / "tests" / "fixtures" / "crds").glob("*.yaml")))
        api = config.new_client_from_config(config_file=str(cp.kubeconfig_path))
        api.configuration.connection_pool_maxsize = threads * 2
        baseline(api, new_namespace(api, "kt-warmup"), 20, threads, True)  # first-use costs
        bare = {
            "all_rayjobs_after_seconds": baseline(
                api, new_namespace(api, "kt-bare"), jobs, threads, False
            ),
            "all_pending_after_seconds": baseline(
                api, new_namespace(api, "kt-bare"), jobs, threads, True
            ),
        }
        namespace = new_namespace(api, "kt-bench")
        log = Path(tempfile.mkdtemp()) / "operator.log"
        operator = OperatorProcess(cp, namespace, log).start()
        try:
            result = measure(cp, api, namespace, operator, jobs, threads)
            result["single_job_idle_ms"] = single_jobs(api, namespace, singles)
        finally:
            operator.stop()
        result["bare_client"] = bare
        result["ratio_all_rayjobs"] = round(
            result["all_rayjobs_after_seconds"] / bare["all_rayjobs_after_seconds"], 2
        )
        result["ratio_all_pending"] = round(
            result["all_pending_after_seconds"] / bare["all_pending_after_seconds"], 2
        )
        return result


def baseline(api: client.ApiClient, namespace: str, jobs: int, threads: int, full: bool) -> float:
    """Seconds a bare client needs, with the same parallelism, for the least work that gets
    every job its RayJob (create the FineTuneJob, then the RayJob) or, `full`, for all the
    work that brings every job to Pending (also the report channel, a status patch and an
    event): what the API server allows on this machine."""
    custom = client.CustomObjectsApi(api)
    kube = Kube(api)
    config_ = OperatorConfig(trainer_image="ghcr.io/kubetune/trainer:test")

    def one(i: int) -> None:
        name = f"bare-{i:04d}"
        created = custom.create_namespaced_custom_object(
            "kubetune.dev", "v1alpha1", namespace, "finetunejobs", job_doc(name)
        )
        job = FineTuneJob.model_validate({k: v for k, v in created.items() if k != "status"})
        *channel, rayjob = owned_objects(job, config_)
        kube.ensure(rayjob)
        if not full:
            return
        for obj in channel:
            kube.ensure(obj)
        uid = created["metadata"]["uid"]
        kube.replace_status(namespace, name, uid, {"phase": "Pending", "message": "RayJob created"})
        kube.post_event(created, "Normal", "Pending", "Pending: RayJob created")

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(jobs)))
    return round(time.monotonic() - started, 2)


def single_jobs(api: client.ApiClient, namespace: str, count: int) -> dict[str, float]:
    """create -> RayJob ADDED for jobs created one at a time on a quiet control plane."""
    custom = client.CustomObjectsApi(api)
    seen: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_rayjobs, args=(api, namespace, seen, stop), daemon=True)
    watcher.start()
    time.sleep(5)  # let the burst's trailing writes settle
    latencies = []
    for i in range(count):
        name = f"single-{i:03d}"
        custom.create_namespaced_custom_object(
            "kubetune.dev", "v1alpha1", namespace, "finetunejobs", job_doc(name)
        )
        created = time.monotonic()
        deadline = created + 30
        while name not in seen and time.monotonic() < deadline:
            time.sleep(0.001)
        latencies.append((seen[name] - created) * 1000)
        time.sleep(0.5)
    stop.set()
    return {
        "p50": round(statistics.median(latencies), 1),
        "max": round(max(latencies), 1),
    }


def measure(
    cp: ControlPlane,
    api: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    jobs: int,
    threads: int,
) -> dict[str, Any]:
    assert operator.proc is not None
    custom = client.CustomObjectsApi(api)
    seen: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_rayjobs, args=(api, namespace, seen, stop), daemon=True)
    watcher.start()
    time.sleep(1)
    rss_idle = rss_mb(operator.proc.pid)[0]
    before = write_counts(cp)
    created: dict[str, float] = {}

    def create(i: int) -> None:
        name = f"bench-{i:04d}"
        custom.create_namespaced_custom_object(
            "kubetune.dev", "v1alpha1", namespace, "finetunejobs", job_doc(name)
        )
        created[name] = time.monotonic()

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, range(jobs)))
    create_seconds = time.monotonic() - started
    deadline = time.monotonic() + 300
    while len(seen) < jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    all_rayjobs = time.monotonic() - started
    pending = wait_all_pending(custom, namespace, jobs, deadline)
    time.sleep(3)  # let trailing writes (kopf annotations, events) land
    after = write_counts(cp)
    stop.set()
    delta = after - before
    delta["finetunejobs"] -= jobs  # the benchmark's own creates
    latencies = [(seen[n] - created[n]) * 1000 for n in created if n in seen]
    rss, peak = rss_mb(operator.proc.pid)
    return {
        "jobs": jobs,
        "create_calls_seconds": round(create_seconds, 2),
        "rayjobs_seen": len(latencies),
        "create_to_rayjob_ms": {
            "p50": round(statistics.median(latencies), 1),
            "p99": round(percentile(latencies, 0.99), 1),
            "max": round(max(latencies), 1),
        },
        "all_rayjobs_after_seconds": round(all_rayjobs, 2),
        "all_pending_after_seconds": round(pending - started, 2),
        "writes_per_job": round(sum(delta.values()) / jobs, 2),
        "writes_by_resource_per_job": {
            k: round(v / jobs, 2) for k, v in sorted(delta.items()) if v
        },
        "operator_rss_mb": {
            "idle": round(rss_idle, 1),
            "after": round(rss, 1),
            "peak": round(peak, 1),
        },
    }


def wait_all_pending(
    custom: client.CustomObjectsApi, namespace: str, jobs: int, deadline: float
) -> float:
    while time.monotonic() < deadline:
        items = custom.list_namespaced_custom_object(
            "kubetune.dev", "v1alpha1", namespace, "finetunejobs"
        )["items"]
        if sum(1 for i in items if (i.get("status") or {}).get("phase") == "Pending") >= jobs:
            return time.monotonic()
        time.sleep(0.2)
    raise TimeoutError("not every job reached Pending")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--singles", type=int, default=20)
    parser.add_argument(
        "--crd",
        type=Path,
        action="append",
        help="FineTuneJob CRD file(s) to install (default: crds/*.yaml)",
    )
    args = parser.parse_args()
    crds = args.crd or sorted((ROOT / "crds").glob("*.yaml"))
    print(json.dumps(run(args.jobs, args.threads, args.singles, crds), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
