"""A stand-in for Kueue's job integration for RayJobs, in control-plane tests.

It follows Kueue's JobReconciler (pkg/controller/jobframework/reconciler.go) for a RayJob
labelled `kueue.x-k8s.io/queue-name`, one pass per tick:
- a Workload is made for the RayJob (owned by it, labelled `kueue.x-k8s.io/job-uid`);
- an inactive Workload (`spec.active: false`) is evicted (condition Evicted, reason
  Deactivated), loses its admission, and its RayJob is suspended ("stopJob");
- a Workload evicted for preemption (`preempt`) likewise, and waits for quota again;
- a Workload that is active, not evicted and has quota is admitted;
- a suspended RayJob whose Workload is admitted is unsuspended ("startJob") — whoever
  suspended it: this is why nothing but Kueue may flip an admitted RayJob's spec.suspend;
- a running RayJob whose Workload is not admitted is suspended ("Not admitted").
`quota` (per RayJob name) says whether its ClusterQueue has room. `flips` records every
change of each RayJob's spec.suspend seen by a watch, whoever made it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from kubernetes import client, watch

RAY = ("ray.io", "v1", "rayjobs")
KUEUE = ("kueue.x-k8s.io", "v1beta2", "workloads")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _condition(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": _now(),
    }


class KueueDouble:
    def __init__(self, admin: client.ApiClient, namespace: str, interval: float = 0.15) -> None:
        self.custom = client.CustomObjectsApi(admin)
        self.namespace = namespace
        self.interval = interval
        self.quota: dict[str, bool] = {}
        self.flips: dict[str, list[bool]] = {}  # RayJob name -> spec.suspend values, in order
        self.errors: list[str] = []
        self._preempt: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, name="kueue-double", daemon=True),
            threading.Thread(target=self._watch_flips, name="kueue-flips", daemon=True),
        ]

    # -- test controls ------------------------------------------------------------------------

    def set_quota(self, rayjob: str, available: bool) -> None:
        with self._lock:
            self.quota[rayjob] = available

    def preempt(self, rayjob: str) -> None:
        """A higher-priority workload takes the quota back: evict this one (Preempted)."""
        with self._lock:
            self.quota[rayjob] = False
            self._preempt.add(rayjob)

    def flip_count(self, rayjob: str) -> int:
        with self._lock:
            values = self.flips.get(rayjob, [])
        return max(len(values) - 1, 0)  # only changes are recorded

    def workload(self, rayjob: str) -> dict[str, Any] | None:
        items = self.custom.list_namespaced_custom_object(
            KUEUE[0], KUEUE[1], self.namespace, KUEUE[2]
        )["items"]
        return next(
            (w for w in items if w["metadata"]["labels"].get("kubetune.test/rayjob") == rayjob),
            None,
        )

    def start(self) -> KueueDouble:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    # -- the reconciler -------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                rayjobs = self.custom.list_namespaced_custom_object(
                    RAY[0], RAY[1], self.namespace, RAY[2]
                )["items"]
                for rayjob in rayjobs:
                    if QUEUE_LABEL in (rayjob["metadata"].get("labels") or {}):
                        self._reconcile(rayjob)
            except Exception as error:  # keep playing; the test sees `errors`
                self.errors.append(repr(error))
            self._stop.wait(self.interval)

    def _reconcile(self, rayjob: dict[str, Any]) -> None:
        name = rayjob["metadata"]["name"]
        workload = self.workload(name) or self._create_workload(rayjob)
        status = workload.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        admitted = (conditions.get("Admitted") or {}).get("status") == "True"
        evicted = (conditions.get("Evicted") or {}).get("status") == "True"
        active = (workload.get("spec") or {}).get("active", True)
        with self._lock:
            quota = self.quota.get(name, False)
            preempt = name in self._preempt
            self._preempt.discard(name)
        suspended = bool(rayjob["spec"].get("suspend"))
        if not active and not evicted:
            self._evict(workload, "Deactivated", "The workload is deactivated")
            self._set_suspend(name, True)
        elif preempt and admitted:
            self._evict(
                workload, "Preempted", "Preempted to accommodate a workload with higher priority"
            )
            self._set_suspend(name, True)
        elif evicted and active and quota:
            self._admit(workload)  # requeued, then admitted again
        elif not admitted and active and quota:
            self._admit(workload)
        elif suspended and admitted:
            self._set_suspend(name, False)  # startJob: "Job admitted, unsuspending"
        elif not suspended and not admitted:
            self._set_suspend(name, True)  # "Not admitted by cluster queue"

    def _create_workload(self, rayjob: dict[str, Any]) -> dict[str, Any]:
        meta = rayjob["metadata"]
        body = {
            "apiVersion": f"{KUEUE[0]}/{KUEUE[1]}",
            "kind": "Workload",
            "metadata": {
                "name": f"rayjob-{meta['name']}-{meta['uid'][:5]}",
                "namespace": self.namespace,
                "labels": {JOB_UID_LABEL: meta["uid"], "kubetune.test/rayjob": meta["name"]},
                "ownerReferences": [
                    {
                        "apiVersion": "ray.io/v1",
                        "kind": "RayJob",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {"queueName": meta["labels"][QUEUE_LABEL], "active": True},
        }
        return dict(
            self.custom.create_namespaced_custom_object(
                KUEUE[0], KUEUE[1], self.namespace, KUEUE[2], body
            )
        )

    def _write_status(self, workload: dict[str, Any], status: dict[str, Any]) -> None:
        self.custom.replace_namespaced_custom_object_status(
            KUEUE[0],
            KUEUE[1],
            self.namespace,
            KUEUE[2],
            workload["metadata"]["name"],
            {**workload, "status": status},
        )

    def _admit(self, workload: dict[str, Any]) -> None:
        self._write_status(
            workload,
            {
                "admission": {"clusterQueue": "gpu-cluster-queue"},
                "conditions": [
                    _condition("QuotaReserved", "True", "QuotaReserved", "Quota reserved"),
                    _condition("Admitted", "True", "Admitted", "The workload is admitted"),
                ],
            },
        )

    def _evict(self, workload: dict[str, Any], reason: str, message: str) -> None:
        self._write_status(
            workload,
            {
                "conditions": [
                    _condition("Evicted", "True", reason, message),
                    _condition("QuotaReserved", "False", "Pending", message),
                    _condition("Admitted", "False", "NoReservation", message),
                ]
            },
        )

    def _set_suspend(self, rayjob: str, suspend: bool) -> None:
        self.custom.patch_namespaced_custom_object(
            RAY[0], RAY[1], self.namespace, RAY[2], rayjob, {"spec": {"suspend": suspend}}
        )

    # -- the flip recorder --------------------------------------------------------------------

    def _watch_flips(self) -> None:
        """Every version of every RayJob, from one resourceVersion to the next (each watch
        is bounded; the next resumes where it stopped, so no flip falls between two)."""
        version: str | None = None
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                stream = watch.Watch().stream(
                    self.custom.list_namespaced_custom_object,
                    RAY[0],
                    RAY[1],
                    self.namespace,
                    RAY[2],
                    timeout_seconds=2,
                    **({"resource_version": version} if version else {}),
                )
                for event in stream:
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    name = obj["metadata"]["name"]
                    value = bool(obj["spec"].get("suspend"))
                    with self._lock:
                        values = self.flips.setdefault(name, [])
                        if not values or values[-1] != value:
                            values.append(value)
