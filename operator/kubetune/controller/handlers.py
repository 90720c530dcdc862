"""kopf handlers: `kopf run -m kubetune.controller.handlers` (or `kubetune operator`).

Event routing only: every event of a FineTuneJob, of a RayJob we own, of a
FineTuneJobReport we own, or of a change that matters in one of its Ray pods leads to
`reconcile.reconcile_job` for the owning job (level-triggered, see there). Only `kopf.on.event` handlers are used, so kopf writes nothing onto the objects: no
progress, no diffbase, no finalizer (deletion is the garbage collector's job through
ownerReferences). Should a stateful handler ever be added, kopf is already configured to keep
its progress and diffbase in annotations under kubetune.dev/, because the structural schema
would prune kopf's default status storage.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kubetune.api.report import REPORT_PLURAL
from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION
from kubetune.builders.meta import COMPONENT_LABEL, JOB_UID_LABEL, MANAGED_BY
from kubetune.config import OperatorConfig
from kubetune.controller import metrics
from kubetune.controller.kube import RAY_GROUP, RAY_PLURAL, RAY_VERSION, Kube, load_api_client
from kubetune.controller.reconcile import Operator, reconcile_job, report_text
from kubetune.controller.state import OperatorState, owner_key
from kubetune.diagnosis import pod_facts

OURS = {"app.kubernetes.io/managed-by": MANAGED_BY}
REPORTS = {**OURS, COMPONENT_LABEL: "report"}
ANNOTATION_PREFIX = "kubetune.dev"


def configure_settings(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """Annotation storage, quiet event posting, fast batching, peering from the config."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    settings.posting.level = logging.WARNING  # our own Events say what happened
    settings.batching.batch_window = 0.01
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Server-side: only the Ray pods of our jobs reach the operator, not every pod it can see.
    settings.watching.label_selectors["pods"] = JOB_UID_LABEL
    settings.peering.standalone = not config.peering
    if config.peering:
        settings.peering.name = config.peering
        settings.peering.mandatory = True
        settings.peering.priority = config.peering_priority
        settings.peering.lifetime = config.peering_lifetime
        settings.peering.clusterwide = not config.namespaces


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # `kubetune operator` passes the config it started kopf with (same random peering
    # priority); under `kopf run -m` it is read here.
    config = memo.get("config") or OperatorConfig.from_env()
    configure_settings(settings, config)
    memo.op = Operator(Kube(load_api_client()), config, OperatorState())
    metrics.serve(config.metrics_port, config.bind_address)


def _op(memo: kopf.Memo) -> Operator:
    op: Operator = memo.op
    return op


@kopf.on.probe(id="jobs")
def jobs_known(memo: kopf.Memo, **_: Any) -> int:
    """Liveness detail: how many FineTuneJobs this operator tracks."""
    return len(_op(memo).state.jobs)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    op = _op(memo)
    key = str(body.metadata.uid)
    if event["type"] == "DELETED":
        op.state.forget(key)
        metrics.publish_phases(op.state.phase_counts)
        return
    op.state.get(key).body = _snapshot(event)
    await reconcile_job(op, key)


@kopf.on.event(RAY_GROUP, RAY_VERSION, RAY_PLURAL, labels=OURS)
async def rayjob_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    op, key = _op(memo), owner_key(body)
    if key is None:
        return
    raw = _snapshot(event)
    if event["type"] == "DELETED":
        js = op.state.jobs.get(key)
        if js is None:  # its job is gone too (garbage collection)
            return
        if js.body is None:  # only children were ever seen: the job is gone
            op.state.forget(key)
            return
        js.rayjob_gone = True  # the object's last status says how far it got
    elif key not in op.state.jobs and (raw.get("metadata") or {}).get("deletionTimestamp"):
        return  # the last events of a RayJob whose job is already gone
    else:
        js = op.state.get(key)
        js.rayjob_gone = False
    js.observe_rayjob(raw)
    await reconcile_job(op, key)


@kopf.on.event(GROUP, VERSION, REPORT_PLURAL, labels=REPORTS)
async def report_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    op, key = _op(memo), owner_key(body)
    if key is None or event["type"] == "DELETED":
        return
    text = report_text(_snapshot(event))
    if text is None:
        return
    op.state.get(key).report_text = text
    await reconcile_job(op, key)


@kopf.on.event("", "v1", "pods", labels={**OURS, JOB_UID_LABEL: kopf.PRESENT})
async def pod_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A Ray pod of one of our jobs (KubeRay makes them from our templates): only a change
    of what explains a job (kubetune.diagnosis.PodFacts) reconciles it."""
    op = _op(memo)
    key = str(body.metadata.labels.get(JOB_UID_LABEL))
    deleted = event["type"] == "DELETED"
    if deleted and key not in op.state.jobs:
        return
    js = op.state.get(key)  # also before the job's own first event (a restart lists both)
    changed = js.observe_pod(pod_facts(_snapshot(event), deleted=deleted))
    if js.body is None and all(pod.deleted for pod in js.pods.values()):
        op.state.forget(key)  # the pods of a job that is gone (garbage collection)
    elif changed:
        await reconcile_job(op, key)


def _snapshot(event: kopf.RawEvent) -> dict[str, Any]:
    """The event's object as received; each watch event carries a new object, which nobody
    mutates, so it is kept by reference (a deep copy per event cost more than the rest)."""
    obj: dict[str, Any] = dict(event["object"])
    return obj
