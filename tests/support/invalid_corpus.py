"""Invalid FineTuneJobs, each with the field its error must name.

Shared by the unit tier (`kubetune validate`) and the control-plane tier (the real API
server), so the two are held to the same answers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SECRET = "hunter22-Zq8vXk"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BASE_EXAMPLE = EXAMPLES / "gsm8k-llama2-7b.yaml"


@dataclass(frozen=True)
class InvalidCase:
    id: str
    mutate: Callable[[dict[str, Any]], None]
    field: str  # the path the error must name
    secret: str | None = None  # a value no error may quote


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node = doc
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node = doc
        *parents, leaf = path.split(".")
        for key in parents:
            node = node[key]
        del node[leaf]

    return mutate


def _chat_scorer(scorer: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return _set("spec.task", {"preset": "chat", "scorer": scorer})


def _stages(
    first_task: dict[str, Any] | None, last_task: dict[str, Any] | None
) -> Callable[[dict[str, Any]], None]:
    """The document's data as a two-stage curriculum, each stage with the task given (if any)."""

    def mutate(doc: dict[str, Any]) -> None:
        data = doc["spec"].pop("data")
        stages = [{"name": "warm-up", "data": data}, {"name": "main", "data": data}]
        for stage, task in zip(stages, (first_task, last_task), strict=True):
            if task is not None:
                stage["task"] = task
        doc["spec"]["stages"] = stages

    return mutate


def _both(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(doc)

    return mutate


CHAT_WITH_SCORER = {"preset": "chat", "scorer": {"kind": "exact_match"}}


CASES: list[InvalidCase] = [
    InvalidCase("zero-epochs", _set("spec.training.epochs", 0), "spec.training.epochs"),
    InvalidCase("negative-epochs", _set("spec.training.epochs", -3), "spec.training.epochs"),
    InvalidCase("too-many-epochs", _set("spec.training.epochs", 1000), "spec.training.epochs"),
    InvalidCase("zero-lr", _set("spec.training.learningRate", 0), "spec.training.learningRate"),
    InvalidCase(
        "negative-lr", _set("spec.training.learningRate", -1e-5), "spec.training.learningRate"
    ),
    InvalidCase("unknown-preset", _set("spec.task.preset", "poetry"), "spec.task.preset"),
    InvalidCase("zero-workers", _set("spec.compute.workers", 0), "spec.compute.workers"),
    InvalidCase(
        "zero-stage-4", _set("spec.training.deepspeed.stage", 4), "spec.training.deepspeed.stage"
    ),
    InvalidCase(
        "context-zero", _set("spec.training.contextLength", 0), "spec.training.contextLength"
    ),
    InvalidCase(
        "context-absurd",
        _set("spec.training.contextLength", 10_000_000),
        "spec.training.contextLength",
    ),
    InvalidCase("missing-model", _drop("spec.model"), "spec.model"),
    InvalidCase("empty-model-name", _set("spec.model.name", ""), "spec.model.name"),
    InvalidCase("missing-train", _drop("spec.data.train"), "spec.data.train"),
    InvalidCase(
        "storage-scheme", _set("spec.output.storageURI", "ftp://bucket/x"), "spec.output.storageURI"
    ),
    InvalidCase(
        "data-scheme",
        _set("spec.data.train.uri", "http://example.com/x.jsonl"),
        "spec.data.train.uri",
    ),
    InvalidCase("unknown-field-spec", _set("spec.trainng", {"epochs": 3}), "spec.trainng"),
    InvalidCase(
        "unknown-field-nested",
        _set("spec.training.learningrate", 1e-5),
        "spec.training.learningrate",
    ),
    InvalidCase(
        "bad-toleration-operator",
        _set("spec.compute.nodePool.tolerations", [{"key": "gpu", "operator": "Maybe"}]),
        "spec.compute.nodePool.tolerations[0].operator",
    ),
    InvalidCase(
        "bad-toleration-effect",
        _set("spec.compute.nodePool.tolerations", [{"key": "gpu", "effect": "Sometimes"}]),
        "spec.compute.nodePool.tolerations[0].effect",
    ),
    InvalidCase(
        "toleration-exists-with-value",
        _set(
            "spec.compute.nodePool.tolerations",
            [{"key": "gpu", "operator": "Exists", "value": "x"}],
        ),
        "spec.compute.nodePool.tolerations[0].value",
    ),
    InvalidCase("bad-precision", _set("spec.training.precision", "fp8"), "spec.training.precision"),
    InvalidCase("bad-method", _set("spec.training.method", "qlora"), "spec.training.method"),
    InvalidCase(
        "unknown-instance-type",
        _set("spec.compute.nodePool.instanceType", "x9.mega"),
        "spec.compute.nodePool.gpusPerNode",
    ),
    InvalidCase(
        "custom-without-templates", _set("spec.task.preset", "custom"), "spec.task.promptTemplate"
    ),
    InvalidCase(
        "templates-without-custom",
        _set("spec.task.promptTemplate", "Q: {question}"),
        "spec.task.promptTemplate",
    ),
    InvalidCase(
        "scorer-on-a-task-with-its-own",
        _set("spec.task.scorer", {"kind": "exact_match"}),
        "spec.task.scorer",
    ),
    InvalidCase(
        "scorer-on-a-stage-never-evaluated",
        _stages(CHAT_WITH_SCORER, {"preset": "chat"}),
        "spec.stages",
    ),
    InvalidCase(
        "spec-scorer-hidden-by-the-last-stage-task",
        _both(_set("spec.task", CHAT_WITH_SCORER), _stages(None, {"preset": "chat"})),
        "spec.task.scorer",
    ),
    InvalidCase(
        "regex-scorer-without-pattern",
        _chat_scorer({"kind": "regex"}),
        "spec.task.scorer.pattern",
    ),
    InvalidCase(
        "pattern-on-another-scorer",
        _chat_scorer({"kind": "numeric", "pattern": "x"}),
        "spec.task.scorer.pattern",
    ),
    InvalidCase(
        "entry-point-not-module-colon-function",
        _chat_scorer({"kind": "python", "entryPoint": "my_scorers.final_answer"}),
        "spec.task.scorer.entryPoint",
    ),
    InvalidCase(
        "unknown-scorer",
        _chat_scorer({"kind": "bleu"}),
        "spec.task.scorer.kind",
    ),
    InvalidCase(
        "data-and-validation-fraction",
        _set("spec.data.validation", {"uri": "s3://b/val.jsonl"}),
        "spec.data.validationFraction",
    ),
    InvalidCase(
        "offload-params-stage-2",
        _set("spec.training.deepspeed", {"stage": 2, "offloadParameters": True}),
        "spec.training.deepspeed.offloadParameters",
    ),
    InvalidCase(
        "lora-settings-full", _set("spec.training.lora", {"rank": 8}), "spec.training.lora"
    ),
    InvalidCase("lora-on-zero3", _set("spec.training.method", "lora"), "spec.training.method"),
    InvalidCase("evaluation-without-test", _drop("spec.data.test"), "spec.evaluation.enabled"),
    InvalidCase(
        "credentials-on-pvc",
        _set("spec.output.storageURI", "pvc://claim/path"),
        "spec.output.credentialsSecretRef",
    ),
    InvalidCase(
        "negative-backoff", _set("spec.runPolicy.backoffLimit", -1), "spec.runPolicy.backoffLimit"
    ),
    InvalidCase(
        "bad-queue-name", _set("spec.runPolicy.queueName", "Not_A_Name"), "spec.runPolicy.queueName"
    ),
    InvalidCase(
        "batch-zero",
        _set("spec.training.batchSizePerDevice", 0),
        "spec.training.batchSizePerDevice",
    ),
    InvalidCase(
        "gpus-per-node-negative",
        _set("spec.compute.nodePool.gpusPerNode", -1),
        "spec.compute.nodePool.gpusPerNode",
    ),
    # gpusPerNode 0 is a CPU-only pool: it needs the worker pod's size.
    InvalidCase(
        "cpu-pool-without-size",
        _set("spec.compute.nodePool.gpusPerNode", 0),
        "spec.compute.nodePool.cpu",
    ),
    InvalidCase(
        "cpu-pool-without-memory",
        _set(
            "spec.compute.nodePool",
            {"instanceType": "kubetune-local", "gpusPerNode": 0, "cpu": "500m"},
        ),
        "spec.compute.nodePool.memory",
    ),
    InvalidCase(
        "worker-cpu-zero", _set("spec.compute.nodePool.cpu", "0m"), "spec.compute.nodePool.cpu"
    ),
    InvalidCase(
        "worker-memory-negative",
        _set("spec.compute.nodePool.memory", "-3Gi"),
        "spec.compute.nodePool.memory",
    ),
    InvalidCase(
        "submitter-cpu-zero", _set("spec.compute.submitter.cpu", "0"), "spec.compute.submitter.cpu"
    ),
    InvalidCase(
        "bad-submitter-memory",
        _set("spec.compute.submitter.memory", "1 GB"),
        "spec.compute.submitter.memory",
    ),
    # Credentials, '..' segments and old Ray: refused by CEL rules that never quote the value.
    InvalidCase(
        "storage-uri-credentials",
        _set("spec.output.storageURI", f"https://admin:{SECRET}@minio.local/ckpt"),
        "spec.output.storageURI",
        secret=SECRET,
    ),
    InvalidCase(
        "data-uri-signed",
        _set("spec.data.train.uri", f"s3://b/t.jsonl?X-Amz-Signature={SECRET}"),
        "spec.data.train.uri",
        secret=SECRET,
    ),
    InvalidCase(
        "model-name-credentials",
        _set("spec.model.name", f"https://bot:{SECRET}@hub.local/m x"),
        "spec.model.name",
        secret=SECRET,
    ),
    InvalidCase(
        "storage-uri-parent",
        _set("spec.output.storageURI", "pvc://c/../x"),
        "spec.output.storageURI",
    ),
    InvalidCase("old-ray", _set("spec.compute.rayVersion", "2.9.3"), "spec.compute.rayVersion"),
    InvalidCase(
        "image-with-shell", _set("spec.compute.image", "t:1;curl x|sh"), "spec.compute.image"
    ),
    InvalidCase("wrong-type-epochs", _set("spec.training.epochs", "ten"), "spec.training.epochs"),
    InvalidCase(
        "bad-head-memory", _set("spec.compute.head.memory", "lots"), "spec.compute.head.memory"
    ),
]


def base_document() -> dict[str, Any]:
    doc = yaml.safe_load(BASE_EXAMPLE.read_text())
    doc["spec"]["data"]["validationFraction"] = 0.1
    return doc


def invalid_document(case: InvalidCase) -> dict[str, Any]:
    doc = copy.deepcopy(base_document())
    case.mutate(doc)
    return doc
