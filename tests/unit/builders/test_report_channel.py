"""The report channel: one FineTuneJobReport and RBAC naming only it."""

from __future__ import annotations

import pytest

from kubetune.builders.report_channel import report_channel
from tests.unit.builders.helpers import NAMESPACE, example_job

pytestmark = pytest.mark.unit


def test_objects_and_order() -> None:
    kinds = [o["kind"] for o in report_channel(example_job("gsm8k-llama2-13b"))]
    assert kinds == ["FineTuneJobReport", "ServiceAccount", "Role", "RoleBinding"]


def test_role_names_exactly_the_report_and_the_job() -> None:
    job = example_job("gsm8k-llama2-13b")
    report, sa, role, binding = report_channel(job)
    assert report["apiVersion"] == "kubetune.dev/v1alpha1" and "report" not in report
    assert role["rules"] == [
        {
            "apiGroups": ["kubetune.dev"],
            "resources": ["finetunejobreports"],
            "resourceNames": [report["metadata"]["name"]],
            "verbs": ["get", "update", "patch"],
        },
        {
            "apiGroups": ["kubetune.dev"],
            "resources": ["finetunejobs"],
            "resourceNames": [job.metadata.name],
            "verbs": ["get"],
        },
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]


def test_all_owned_by_the_job() -> None:
    for obj in report_channel(example_job("gsm8k-llama2-13b")):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner["controller"] is True and owner["blockOwnerDeletion"] is True
