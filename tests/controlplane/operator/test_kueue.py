"""Kueue without a tug of war: the operator never flips an admitted RayJob's spec.suspend.

With runPolicy.queueName, Kueue owns RayJob.spec.suspend: it unsuspends a RayJob whose
Workload is admitted, whoever suspended it. A user's runPolicy.suspend therefore goes to the
Workload (spec.active), Kueue's documented way to stop and restart an admitted job, and
every user action flips the RayJob's spec.suspend exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.controlplane.operator.helpers import (
    FTJ,
    FTJS,
    condition,
    create_job,
    job_manifest,
    rayjobs,
    wait_for,
    wait_phase,
)
from tests.support.kuberay_double import KubeRayDouble, Script
from tests.support.kueue_double import KueueDouble

pytestmark = [pytest.mark.controlplane, pytest.mark.usefixtures("operator_process")]
SETTLE_S = 3.0  # long enough for a tug of war to show: each side acts within 0.2 s


@pytest.fixture
def kueue(kube_api: client.ApiClient, namespace: str) -> Iterator[KueueDouble]:
    double = KueueDouble(kube_api, namespace).start()
    yield double
    double.stop()


def set_suspend(custom: client.CustomObjectsApi, namespace: str, suspend: bool) -> None:
    custom.patch_namespaced_custom_object(
        *FTJ, namespace, FTJS, "queued", {"spec": {"runPolicy": {"suspend": suspend}}}
    )


def reason(status: dict, type_: str) -> str:
    return str(condition(status, type_)["reason"])


def test_queue_admit_preempt_suspend_resume_one_flip_each(
    custom: client.CustomObjectsApi,
    namespace: str,
    kuberay: KubeRayDouble,
    kueue: KueueDouble,
) -> None:
    kuberay.script("queued", Script(hold_at="Running"))
    create_job(custom, namespace, job_manifest("queued", runPolicy={"queueName": "gpu"}))
    status = wait_phase(custom, namespace, "queued", "Queued")
    (rayjob,) = rayjobs(custom, namespace)
    name = rayjob["metadata"]["name"]
    assert rayjob["spec"]["suspend"] is True
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    assert reason(status, "Suspended") == "QuotaWait" and "gpu" in status["message"]

    # Admitted: Kueue unsuspends (flip 1) and the run starts.
    kueue.set_quota(name, True)
    wait_for(lambda: kuberay.is_held("queued"), what="training")
    wait_phase(custom, namespace, "queued", "Training")
    assert kueue.flip_count(name) == 1

    # Preempted: Kueue evicts and suspends (flip 2); the job is queued again, and says why.
    kueue.preempt(name)
    status = wait_for(
        lambda: (
            (s := _status(custom, namespace)).get("phase") == "Queued"
            and reason(s, "Suspended") == "Preempted"
            and s
        ),
        what="Queued, reason Preempted",
    )
    assert "queued again in gpu" in status["message"]
    kueue.set_quota(name, True)  # re-admitted: flip 3
    wait_phase(custom, namespace, "queued", "Training")
    time.sleep(SETTLE_S)
    assert kueue.flip_count(name) == 3

    # The user suspends: the Workload is deactivated and Kueue suspends the RayJob (flip 4);
    # the operator does not touch spec.suspend, so nothing flips it back.
    user_action(custom, namespace, kueue, name, suspend=True, phase="Suspended", flips=4)
    # The user resumes: the Workload is active again, Kueue re-admits and unsuspends (flip 5).
    user_action(custom, namespace, kueue, name, suspend=False, phase="Training", flips=5)
    kuberay.release("queued")
    wait_phase(custom, namespace, "queued", "Succeeded")
    assert not kueue.errors and not kuberay.errors


def user_action(
    custom: client.CustomObjectsApi,
    namespace: str,
    kueue: KueueDouble,
    rayjob: str,
    suspend: bool,
    phase: str,
    flips: int,
) -> None:
    """runPolicy.suspend set; the job reaches `phase`, and after a settling time the
    Workload's spec.active says the opposite and the RayJob flipped `flips` times in all."""
    set_suspend(custom, namespace, suspend)
    wait_phase(custom, namespace, "queued", phase)
    time.sleep(SETTLE_S)
    workload = kueue.workload(rayjob)
    assert workload is not None and workload["spec"]["active"] is (not suspend)
    assert kueue.flip_count(rayjob) == flips, kueue.flips[rayjob]


def _status(custom: client.CustomObjectsApi, namespace: str) -> dict:
    job = custom.get_namespaced_custom_object(*FTJ, namespace, FTJS, "queued")
    return dict(job.get("status") or {})
