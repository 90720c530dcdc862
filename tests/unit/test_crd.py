from pathlib import Path

import pytest

from kubetune.api import v1alpha1 as api
from kubetune.api.base import KubeModel
from kubetune.crd import finetunejob_crd
from kubetune.generate import generated_files

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "path", sorted(generated_files(ROOT)), ids=lambda p: str(p.relative_to(ROOT))
)
def test_generated_files_match_the_models(path):
    """crds/, the chart's CRD copy and docs/api-reference.md are renders of the models."""
    expected = generated_files(ROOT)[path]
    assert path.exists() and path.read_text() == expected, (
        f"{path.relative_to(ROOT)} is stale: run make manifests"
    )


def walk(node, path="$"):
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


def schema():
    return finetunejob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_schema_is_structural():
    for path, node in walk(schema()):
        if isinstance(node, dict):
            for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs", "const"):
                assert forbidden not in node, f"{forbidden} at {path}"
            if "properties" in node:
                assert "additionalProperties" not in node, path
            if "exclusiveMinimum" in node:
                assert node["exclusiveMinimum"] is True, path


def test_every_field_has_a_type_and_description():
    def check(node, path):
        assert "type" in node, f"no type at {path}"
        for name, sub in node.get("properties", {}).items():
            if path == "$" and name == "metadata":
                continue
            assert sub.get("description"), f"no description at {path}.{name}"
            check(sub, f"{path}.{name}")
        if "items" in node:
            check(node["items"], f"{path}[]")

    check(schema(), "$")


def test_every_cross_field_rule_is_in_the_crd():
    in_crd = {
        node["rule"] for _, node in walk(schema()) if isinstance(node, dict) and "rule" in node
    }
    for model in KubeModel.__subclasses__():
        for rule in model.rules:
            assert rule.cel in in_crd, (model.__name__, rule.cel)


def test_crd_names_and_columns():
    crd = finetunejob_crd()
    names = crd["spec"]["names"]
    assert (names["plural"], names["kind"], names["shortNames"], names["categories"]) == (
        "finetunejobs",
        "FineTuneJob",
        ["ftj"],
        ["kubetune"],
    )
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase",
        "Model",
        "Task",
        "Epoch",
        "Best-PPL",
        "Score",
        "Age",
    ]


def test_conditions_are_a_map_list_keyed_by_type():
    conditions = schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_spec_defaults_match_the_models():
    training = schema()["properties"]["spec"]["properties"]["training"]
    assert training["default"] == api.TrainingSpec().to_wire()
    assert training["properties"]["epochs"]["default"] == api.TrainingSpec().epochs
    assert training["properties"]["learningRate"]["default"] == api.TrainingSpec().learning_rate


def test_spec_is_immutable_except_suspend():
    rules = schema()["properties"]["spec"]["x-kubernetes-validations"]
    transition = [r for r in rules if "oldSelf" in r["rule"]]
    guarded = {r["fieldPath"] for r in transition}
    assert guarded >= {
        ".model",
        ".task",
        ".data",
        ".stages",
        ".training",
        ".evaluation",
        ".compute",
        ".output",
    }
    run_policy = schema()["properties"]["spec"]["properties"]["runPolicy"]
    run_policy_guarded = {r["fieldPath"] for r in run_policy["x-kubernetes-validations"]}
    assert ".suspend" not in run_policy_guarded and ".queueName" in run_policy_guarded
