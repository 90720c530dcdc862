"""kubetune.diagnosis: pod statuses and events as Kubernetes writes them -> one cause."""

from __future__ import annotations

import pytest

from kubetune.diagnosis import (
    POD_REASONS,
    RUN_REASONS,
    STARTING_REASONS,
    classify_error,
    diagnose,
    pod_facts,
    warning_event,
)
from tests.support import pod_states as k8s

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("status", "reason", "words", "permanent"),
    [
        (k8s.unschedulable(), "Unschedulable", "didn't match Pod's node affinity", False),
        (k8s.image_pull_backoff(), "ImagePullFailed", "trainer:typo", False),
        (k8s.image_never_pull(), "ImagePullFailed", "pull policy of Never", True),
        (k8s.config_error(), "PodConfigError", 'secret "hf-token" not found', False),
        (k8s.oom_killed(), "OOMKilled", "exit code 137", False),
        (k8s.evicted(), "Evicted", "kubetune-scratch", False),
        (k8s.preempted(), "Preempted", "DeletionByTaintManager", False),
    ],
)
def test_each_pod_state_has_its_reason(
    status: dict, reason: str, words: str, permanent: bool
) -> None:
    found = diagnose([pod_facts(k8s.pod("w-1", "u1", status))])
    assert found is not None
    assert (found.reason, found.permanent) == (reason, permanent)
    assert "w-1" in found.message and words in found.message


def test_a_running_pod_has_no_cause() -> None:
    running = {"phase": "Running", "containerStatuses": [{"name": "c", "state": {"running": {}}}]}
    assert diagnose([pod_facts(k8s.pod("w", "u", running))]) is None
    assert diagnose([pod_facts(k8s.pod("w", "u", k8s.container_creating()))]) is None


def test_events_say_what_the_status_does_not() -> None:
    waiting = pod_facts(k8s.pod("w-1", "u1", k8s.container_creating()))
    mount = warning_event(k8s.warning_event("w-1", "u1", "FailedMount", k8s.MOUNT_MESSAGE))
    other = warning_event(k8s.warning_event("x", "u9", "FailedMount", "not this pod"))
    assert mount is not None and other is not None
    found = diagnose([waiting], [other, mount])
    assert found is not None and found.reason == "PodConfigError"
    assert 'persistentvolumeclaim "ckpt" not found' in found.message
    normal = {**k8s.warning_event("w-1", "u1", "Pulled", "ok"), "type": "Normal"}
    assert warning_event(normal) is None


def test_most_specific_cause_wins_and_others_are_counted() -> None:
    pods = [
        pod_facts(k8s.pod("w-1", "u1", k8s.unschedulable())),
        pod_facts(k8s.pod("w-2", "u2", k8s.image_pull_backoff())),
        pod_facts(k8s.pod("w-3", "u3", k8s.image_pull_backoff())),
    ]
    found = diagnose(pods)
    assert found is not None and found.reason == "ImagePullFailed"
    assert "w-2" in found.message and "(and 1 more pod)" in found.message
    assert POD_REASONS.index("ImagePullFailed") < POD_REASONS.index("Unschedulable")


def test_a_sigkill_is_not_an_oom_kill_and_old_attempts_do_not_count() -> None:
    killed = k8s.oom_killed()
    killed["containerStatuses"][0]["lastState"]["terminated"]["reason"] = "Error"  # exit 137
    assert diagnose([pod_facts(k8s.pod("w", "u", killed))]) is None
    old = pod_facts(
        {
            **k8s.pod("w-1", "u1", k8s.oom_killed()),
            "metadata": {"name": "w-1", "uid": "u1", "creationTimestamp": "2026-12-06T09:00:00Z"},
        }
    )
    assert diagnose([old]) is not None
    assert diagnose([old], since="2026-12-06T09:30:00Z") is None


def test_events_of_a_pod_that_started_are_history() -> None:
    running = pod_facts(k8s.pod("w-1", "u1", k8s.oom_killed()))  # phase Running
    mount = warning_event(k8s.warning_event("w-1", "u1", "FailedMount", k8s.MOUNT_MESSAGE))
    assert mount is not None
    found = diagnose([running], [mount], reasons=("PodConfigError",))
    assert found is None


def test_reason_sets_and_deleted_pods() -> None:
    gone = pod_facts(k8s.pod("w-old", "u1", k8s.oom_killed()), deleted=True)
    pending = pod_facts(k8s.pod("w-new", "u2", k8s.unschedulable()))
    # An earlier attempt's OOM kill explains a failure, not why the new cluster waits.
    starting = diagnose([gone, pending], reasons=STARTING_REASONS, live_only=True)
    assert starting is not None and starting.reason == "Unschedulable"
    failed = diagnose([gone, pending], reasons=RUN_REASONS)
    assert failed is not None and failed.reason == "OOMKilled"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "OOMKilled"),
        (
            "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on "
            "memory.",
            "OOMKilled",
        ),
        (
            "DistBackendError: [Rank 3] Watchdog caught collective operation timeout: "
            "WorkNCCL(SeqNum=1234, OpType=ALLREDUCE) ran for 1800000 milliseconds",
            "CollectiveTimeout",
        ),
        (
            "RuntimeError: [/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting "
            "1800000ms for recv operation to complete",
            "CollectiveTimeout",
        ),
        ("DataError: ValueError: train.jsonl: malformed JSON at line 3", "DataError"),
        ("RuntimeError: stage gsm8k produced no checkpoint", None),
        (None, None),
    ],
)
def test_trainer_errors_are_classified(text: str | None, reason: str | None) -> None:
    assert classify_error(text) == reason
