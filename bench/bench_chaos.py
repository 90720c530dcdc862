"""Benchmark: job lifecycles survive operator kills and an API server restart.

20 FineTuneJobs run to completion against the test control plane, with the KubeRay double
playing KubeRay and the trainer, while the operator (a real subprocess) is SIGKILLed 5 times
at random moments and the API server is restarted once. Counted:
- duplicate RayJobs: every RayJob uid ever seen (a watch, re-listed after each drop) per job;
  more than one uid for a job is a duplicate, and a re-run of its training;
- jobs that do not converge to Succeeded within the time limit;
- convergence time: from the end of the last fault (operator healthy again, or API server
  ready) to every job Succeeded.

Usage: python bench/bench_chaos.py [--jobs 20] [--kills 5] [--seed 7]
Targets (issue 9): 0 duplicate RayJobs, 0 re-runs, every job converges.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "trainer_image")]

from bench_operator import job_doc  # noqa: E402
from kubernetes import client, config, watch  # noqa: E402

from tests.support.controlplane import ControlPlane, ensure_binaries  # noqa: E402
from tests.support.kuberay_double import KubeRayDouble, Script  # noqa: E402
from tests.support.operator_process import OperatorProcess  # noqa: E402

FTJ = ("kubetune.dev", "v1alpha1", "finetunejobs")


def watch_uids(
    api: client.ApiClient, namespace: str, uids: dict[str, set[str]], stop: threading.Event
) -> None:
    """Every RayJob uid per name; the watch is re-opened (with a fresh list) after any drop,
    so a RayJob that lived only while the watch was down is still seen if it still exists."""
    custom = client.CustomObjectsApi(api)
    while not stop.is_set():
        try:
            for item in custom.list_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs")[
                "items"
            ]:
                uids[item["metadata"]["name"]].add(item["metadata"]["uid"])
            for event in watch.Watch().stream(
                custom.list_namespaced_custom_object,
                "ray.io",
                "v1",
                namespace,
                "rayjobs",
                timeout_seconds=10,
            ):
                meta = event["object"]["metadata"]
                uids[meta["name"]].add(meta["uid"])
                if stop.is_set():
                    break
        except Exception:
            time.sleep(0.2)


def phases(custom: client.CustomObjectsApi, namespace: str) -> dict[str, str]:
    items = custom.list_namespaced_custom_object(*FTJ[:2], namespace, FTJ[2])["items"]
    return {i["metadata"]["name"]: (i.get("status") or {}).get("phase", "") for i in items}


def run(jobs: int, kills: int, seed: int, limit: float) -> dict[str, Any]:
    rng = random.Random(seed)
    with ControlPlane(ensure_binaries()) as cp:
        cp.install_crds(
            sorted((ROOT / "crds").glob("*.yaml"))
            + sorted((ROOT / "tests" / "fixtures" / "crds").glob("*.yaml"))
        )
        api = config.new_client_from_config(config_file=str(cp.kubeconfig_path))
        custom = client.CustomObjectsApi(api)
        namespace = f"kt-chaos-{uuid.uuid4().hex[:6]}"
        client.CoreV1Api(api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
        )
        operator = OperatorProcess(cp, namespace, Path(tempfile.mkdtemp()) / "operator.log")
        double = KubeRayDouble(api, namespace, cp.server, cp.ca_path)
        double.default = Script(epochs=8)
        uids: dict[str, set[str]] = defaultdict(set)
        stop = threading.Event()
        watcher = threading.Thread(
            target=watch_uids, args=(api, namespace, uids, stop), daemon=True
        )
        operator.start()
        double.start()
        watcher.start()
        # Faults at random moments of the window in which jobs are created and running.
        window = jobs * 1.0 + 10
        faults = sorted(
            [("kill", rng.uniform(1, window)) for _ in range(kills)]
            + [("apiserver", rng.uniform(1, window))],
            key=lambda f: f[1],
        )
        started = time.monotonic()
        created, last_fault_end = 0, started
        fault_log = []
        try:
            while faults or created < jobs:
                now = time.monotonic() - started
                if created < jobs and now >= created * 1.0:
                    try:
                        custom.create_namespaced_custom_object(
                            *FTJ[:2],
                            namespace,
                            FTJ[2],
                            job_doc(f"chaos-{created:02d}", "gsm8k-llama2-7b"),
                        )
                        created += 1
                    except Exception:  # the API server is restarting: try again
                        time.sleep(0.2)
                if faults and now >= faults[0][1]:
                    kind, _ = faults.pop(0)
                    if kind == "kill":
                        operator.kill()
                        time.sleep(rng.uniform(0, 2))
                        operator.start()
                    else:
                        cp.restart_apiserver()
                    last_fault_end = time.monotonic()
                    fault_log.append((kind, round(last_fault_end - started, 1)))
                time.sleep(0.05)
            deadline = time.monotonic() + limit
            seen: dict[str, str] = {}
            while time.monotonic() < deadline:
                try:
                    seen = phases(custom, namespace)
                except Exception:
                    time.sleep(0.5)
                    continue
                if len(seen) == jobs and all(p == "Succeeded" for p in seen.values()):
                    break
                time.sleep(0.2)
            converged_after = time.monotonic() - last_fault_end
        finally:
            stop.set()
            double.stop()
            operator.stop()
        final = custom.list_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs")["items"]
        for item in final:
            uids[item["metadata"]["name"]].add(item["metadata"]["uid"])
        not_converged = sorted(n for n, p in seen.items() if p != "Succeeded")
        return {
            "jobs": jobs,
            "faults": fault_log,
            "duplicate_rayjobs": sum(len(u) - 1 for u in uids.values()),
            "jobs_without_rayjob": jobs - len(uids),
            "not_converged": not_converged + [f"chaos-{i:02d}?" for i in range(len(seen), jobs)],
            "convergence_after_last_fault_seconds": round(converged_after, 1),
            "operator_tracebacks": operator.logs().count("Traceback"),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--limit", type=float, default=300, help="seconds to converge")
    args = parser.parse_args()
    result = run(args.jobs, args.kills, args.seed, args.limit)
    print(json.dumps(result, indent=2))
    ok = not result["duplicate_rayjobs"] and not result["not_converged"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
