"""The KubeRay double against real KubeRay: for the same script (a run that succeeds, a trainer
that fails), the double writes the RayJob states the real operator wrote on real pods
(tests/support/transcripts.py says what "the same" means for a polled recording)."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.controlplane.operator.helpers import create_job, job_manifest, rayjobs, wait_phase
from tests.support import transcripts
from tests.support.kuberay_double import KubeRayDouble, Script
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.controlplane


@pytest.fixture(autouse=True)
def _operator(operator_process: OperatorProcess) -> OperatorProcess:
    return operator_process


@pytest.mark.parametrize(
    ("script", "phase", "recording"),
    [
        (Script(), "Succeeded", transcripts.SUCCESS),
        (Script(outcome="trainer-fails"), "Failed", transcripts.APP_FAILED),
        (Script(fail_attempts=1), "Succeeded", transcripts.RETRY),
    ],
    ids=["succeeds", "trainer-fails", "retried"],
)
def test_the_double_writes_the_states_real_kuberay_wrote(
    custom: client.CustomObjectsApi,
    namespace: str,
    kuberay: KubeRayDouble,
    script: Script,
    phase: str,
    recording: str,
) -> None:
    name = f"honest-{script.outcome}-{script.fail_attempts}"
    kuberay.default = script
    create_job(custom, namespace, job_manifest(name, runPolicy={"backoffLimit": 1}))
    wait_phase(custom, namespace, name, phase)
    (rayjob,) = rayjobs(custom, namespace)
    history = kuberay.history[rayjob["metadata"]["name"]]
    assert transcripts.differences(history, recording) == []
    assert not kuberay.errors, kuberay.errors


def test_the_check_catches_a_double_that_skips_or_invents_a_state():
    real = transcripts.recorded(transcripts.SUCCESS)
    skipping = [state for state in real if state != ("Running", "SUCCEEDED")]
    assert "never did" in transcripts.differences(skipping, transcripts.SUCCESS)[0]
    inventing = [*real[:-1], ("Running", "DONE"), real[-1]]
    assert "never showed" in transcripts.differences(inventing, transcripts.SUCCESS)[0]
