"""Generate the FineTuneJob CustomResourceDefinition from the pydantic models.

Kubernetes wants a *structural* schema: every node typed, no `$ref`, `anyOf`, `title` or
`additionalProperties: false`, `exclusiveMinimum` as a boolean. Pydantic emits JSON Schema
2020-12, so this module inlines references and rewrites those constructs, and adds the
cross-field rules of each model as CEL `x-kubernetes-validations`.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from kubetune.api import report as report_api
from kubetune.api import v1alpha1 as api
from kubetune.api.base import KubeModel, Rule

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
    {"name": "Task", "type": "string", "jsonPath": ".spec.task.preset"},
    {"name": "Epoch", "type": "integer", "jsonPath": ".status.progress.epoch"},
    {
        "name": "Best-PPL",
        "type": "number",
        "jsonPath": ".status.bestCheckpoint.validationPerplexity",
        "description": "Lowest validation perplexity",
    },
    {
        "name": "Score",
        "type": "number",
        "jsonPath": ".status.evaluation.score",
        "description": "Headline evaluation metric of the best checkpoint",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _cel_rules(model: type[KubeModel]) -> list[dict[str, Any]]:
    return [_cel_rule(rule) for rule in model.rules]


def _cel_rule(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"rule": rule.cel, "message": rule.message}
    if rule.field:
        out["fieldPath"] = "." + rule.field
    if rule.field and not rule.transition:
        out["reason"] = "FieldValueInvalid"
    return out


def _models_by_title(root: type[BaseModel]) -> dict[str, type[KubeModel]]:
    """Pydantic names each $def after its class; map those names back to the classes."""
    found: dict[str, type[KubeModel]] = {}

    def visit(model: type[BaseModel]) -> None:
        if not issubclass(model, KubeModel) or model.__name__ in found:
            return
        found[model.__name__] = model
        for field in model.model_fields.values():
            for sub in _model_types(field.annotation):
                visit(sub)

    visit(root)
    return found


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _model_types(arg)]


def structural_schema(root: type[BaseModel]) -> dict[str, Any]:
    """The openAPIV3Schema of `root`, made structural."""
    raw = root.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    models = _models_by_title(root)

    def convert(node: Any) -> Any:
        if isinstance(node, list):
            return [convert(item) for item in node]
        if not isinstance(node, dict):
            return node
        node = dict(node)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            target = copy.deepcopy(defs[name])
            target.update(node)  # keep description/default given at the use site
            node = target
            if name in models and models[name].rules:
                node.setdefault("x-kubernetes-validations", []).extend(_cel_rules(models[name]))
        if "anyOf" in node:
            options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"cannot make a structural schema of anyOf {options}")
            merged = convert(options[0])
            merged.update({k: v for k, v in node.items() if k != "default"})
            if node.get("default") is not None:
                merged["default"] = node["default"]
            node = merged
        node.pop("title", None)
        if node.get("default", 0) is None:
            node.pop("default")
        if node.get("type") == "object" and "properties" in node:
            node.pop("additionalProperties", None)
        for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
                node[flag] = node.pop(bound)
                node[bound] = True
        if "enum" in node and "type" not in node:
            node["type"] = "string"
        return {key: convert(value) for key, value in node.items()}

    schema = convert(raw)
    if issubclass(root, KubeModel) and root.rules:
        schema.setdefault("x-kubernetes-validations", []).extend(_cel_rules(root))
    return schema


def finetunejob_crd() -> dict[str, Any]:
    spec_schema = structural_schema(api.FineTuneJobSpec)
    status_schema = structural_schema(api.FineTuneJobStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "annotations": {"kubetune.dev/generated-by": "kubetune manifests (do not edit)"},
        },
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": api.FineTuneJob.__doc__,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "kubetune.dev/v1alpha1",
                                },
                                "kind": {"type": "string", "description": "FineTuneJob"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


REPORT_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def finetunejobreport_crd() -> dict[str, Any]:
    """The trainer's report channel: one object per job, created and owned by the operator,
    written by the job's trainer alone (its Role names the one object)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{report_api.REPORT_PLURAL}.{api.GROUP}",
            "annotations": {"kubetune.dev/generated-by": "kubetune manifests (do not edit)"},
        },
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": report_api.REPORT_KIND,
                "listKind": f"{report_api.REPORT_KIND}List",
                "plural": report_api.REPORT_PLURAL,
                "singular": report_api.REPORT_SINGULAR,
                "categories": list(api.CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": REPORT_PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "The trainer's report of one FineTuneJob (same name + "
                                "'-report'); the operator mirrors it into the job's status."
                            ),
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                report_api.REPORT_FIELD: {
                                    "type": "string",
                                    "maxLength": report_api.REPORT_DOCUMENT_LIMIT,
                                    "description": (
                                        "The TrainerReport document as JSON text (see the "
                                        "API reference); empty until the trainer writes it."
                                    ),
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


CRD_HEADER = (
    "# Generated by `kubetune manifests` from the pydantic models. "
    "Do not edit: run `make manifests`.\n"
)


def render_crds() -> str:
    """The FineTuneJob CRD's YAML, as `kubetune manifests` prints it and crds/ holds it."""
    return CRD_HEADER + yaml.safe_dump(finetunejob_crd(), sort_keys=False, width=100)


def render_report_crd() -> str:
    return CRD_HEADER + yaml.safe_dump(finetunejobreport_crd(), sort_keys=False, width=100)
