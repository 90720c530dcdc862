"""The generated CRD on the real API server: examples accepted, the invalid corpus refused
with the same field as `kubetune validate`, immutability, printer columns and explain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune.api import v1alpha1 as api
from kubetune.commands import validate_document
from tests.support.controlplane import temporary_namespace
from tests.support.invalid_corpus import CASES, EXAMPLES, base_document, invalid_document

pytestmark = pytest.mark.controlplane


@pytest.fixture
def namespace(kube_api: client.ApiClient) -> Iterator[str]:
    """A namespace no operator watches (it watches kt-*): these tests write .status themselves."""
    with temporary_namespace(kube_api, "crd") as name:
        yield name


def custom_api(kube_api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


def create(kube_api: client.ApiClient, namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
    # Strict field validation is what kubectl (>= 1.27) uses: unknown fields are errors.
    return custom_api(kube_api).create_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.PLURAL, doc, field_validation="Strict"
    )


def patch(
    kube_api: client.ApiClient, namespace: str, name: str, body: dict[str, Any]
) -> dict[str, Any]:
    return custom_api(kube_api).patch_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.PLURAL, name, body
    )


def rejection(error: ApiException) -> str:
    body = json.loads(error.body)
    causes = body.get("details", {}).get("causes", [])
    return (
        body.get("message", "")
        + " "
        + " ".join(f"{c.get('field')}: {c.get('message')}" for c in causes)
    )


def contains(big: Any, small: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(
            k in big and contains(big[k], v) for k, v in small.items()
        )
    if isinstance(small, list):
        return isinstance(big, list) and len(big) == len(small) and all(map(contains, big, small))
    return big == small


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_is_accepted_and_read_back_equal(kube_api, namespace, example: Path):
    sent = yaml.safe_load(example.read_text())
    created = create(kube_api, namespace, sent)
    assert contains(created["spec"], sent["spec"]), "the API server changed or pruned a field"
    # The API server fills CRD defaults; they must be the models' defaults.
    assert api.FineTuneJobSpec.model_validate(
        created["spec"]
    ) == api.FineTuneJobSpec.model_validate(sent["spec"])
    assert validate_document(sent)[0] == []


def test_invalid_corpus_is_refused_naming_the_same_field(kube_api, namespace):
    disagreements = []
    for index, case in enumerate(CASES):
        doc = invalid_document(case)
        doc["metadata"]["name"] = f"invalid-{index}"
        offline = validate_document(doc)[0]
        try:
            create(kube_api, namespace, doc)
        except ApiException as error:
            message = rejection(error)
            if error.status not in (400, 422) or case.field not in message:
                disagreements.append(f"{case.id}: API server said {message!r}")
            if case.secret and case.secret in (error.body or ""):
                disagreements.append(f"{case.id}: API server quoted the secret")
        else:
            disagreements.append(f"{case.id}: API server accepted it")
        if case.secret and any(case.secret in str(p) for p in offline):
            disagreements.append(f"{case.id}: kubetune validate quoted the secret")
        if not offline or not str(offline[0]).startswith(case.field):
            disagreements.append(f"{case.id}: kubetune validate said {[str(p) for p in offline]}")
    assert not disagreements, "\n".join(disagreements)


def test_spec_is_immutable_but_suspend_toggles(kube_api, namespace):
    doc = base_document()
    create(kube_api, namespace, doc)
    name = doc["metadata"]["name"]
    for change, field in [
        ({"training": {"epochs": 3}}, "training"),
        ({"model": {"name": "meta-llama/Llama-2-13b-hf"}}, "model"),
        ({"runPolicy": {"backoffLimit": 3}}, "runPolicy.backoffLimit"),
        ({"runPolicy": {"queueName": "other"}}, "runPolicy.queueName"),
    ]:
        with pytest.raises(ApiException) as refused:
            patch(kube_api, namespace, name, {"spec": change})
        assert f"{field} is immutable" in rejection(refused.value)
    suspended = patch(kube_api, namespace, name, {"spec": {"runPolicy": {"suspend": True}}})
    assert suspended["spec"]["runPolicy"]["suspend"] is True
    resumed = patch(kube_api, namespace, name, {"spec": {"runPolicy": {"suspend": False}}})
    assert resumed["spec"]["runPolicy"]["suspend"] is False


def sample_status() -> api.FineTuneJobStatus:
    return api.FineTuneJobStatus(
        phase="Training",
        progress=api.Progress(stage="gsm8k", epoch=3, total_epochs=10, step=120, total_steps=400),
        epochs=[
            api.EpochMetrics(
                stage="gsm8k",
                epoch=1,
                train_loss=1.2,
                validation_loss=0.66,
                validation_perplexity=1.93,
            )
        ],
        best_checkpoint=api.BestCheckpoint(
            uri="s3://b/ckpt/epoch-1", stage="gsm8k", epoch=1, validation_perplexity=1.93
        ),
        evaluation=api.EvaluationResult(
            task="gsm8k",
            samples=10,
            primary_metric="accuracy",
            score=0.47,
            metrics={"accuracy": 0.47},
        ),
        conditions=[
            api.Condition(
                type="Ready",
                status="False",
                reason="Training",
                last_transition_time="2026-11-28T00:00:00Z",
                observed_generation=1,
            )
        ],
    )


def test_status_subresource_takes_the_status_model_and_kubectl_shows_columns(
    kube_api, namespace, kubectl
):
    doc = base_document()
    create(kube_api, namespace, doc)
    name = doc["metadata"]["name"]
    custom_api(kube_api).patch_namespaced_custom_object_status(
        api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": sample_status().to_wire()}
    )
    with pytest.raises(ApiException):
        custom_api(kube_api).patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": {"phase": "Sleeping"}}
        )
    result = kubectl("get", "ftj", "-n", namespace)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "MODEL", "TASK", "EPOCH", "BEST-PPL", "SCORE", "AGE"]
    assert row.split()[:7] == [
        name,
        "Training",
        "meta-llama/Llama-2-7b-hf",
        "gsm8k",
        "3",
        "1.93",
        "0.47",
    ]
    by_category = kubectl("get", "kubetune", "-n", namespace)
    assert name in by_category.stdout


def test_kubectl_explain_shows_the_model_descriptions(kubectl):
    result = kubectl("explain", "finetunejob.spec.training")
    assert result.returncode == 0, result.stderr
    assert "Passes over the training data." in result.stdout
    assert "learningRate" in result.stdout and "Peak learning rate" in result.stdout
