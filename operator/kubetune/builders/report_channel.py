"""The per-job report channel: a FineTuneJobReport the trainer writes and narrow RBAC to write it.

The Ray pods run as their own ServiceAccount whose Role names exactly two objects
(`resourceNames`): the job's FineTuneJobReport (get/update/patch) and the job's own
FineTuneJob (get, so the trainer reads its spec from the API instead of a size-limited command
line). `create` is not granted because RBAC cannot restrict create by name, and the operator
creates the report up front; `list` and `watch` are not granted because they would not be
limited to that name either. So a compromised trainer can overwrite its own report and
nothing else.

The report is kubetune's own kind, not a ConfigMap: RBAC forbids granting a verb one does not
hold, so a ConfigMap channel made the operator hold update/patch on every ConfigMap of every
namespace (kube-system's included). Now every write right it holds beyond its children's
creation is on kubetune.dev resources.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.report import REPORT_KIND, REPORT_PLURAL
from kubetune.api.v1alpha1 import API_VERSION, GROUP, PLURAL, FineTuneJob
from kubetune.builders.meta import namespace_of, object_meta
from kubetune.builders.naming import report_name, service_account_name

REPORT_VERBS = ("get", "update", "patch")


def report_object(job: FineTuneJob) -> dict[str, Any]:
    """Empty at first: the operator treats a missing `report` as 'no report yet'."""
    return {
        "apiVersion": API_VERSION,
        "kind": REPORT_KIND,
        "metadata": object_meta(job, report_name(job.metadata.name), "report"),
    }


def trainer_service_account(job: FineTuneJob) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": object_meta(job, service_account_name(job.metadata.name), "trainer"),
    }


def report_role(job: FineTuneJob) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": object_meta(job, service_account_name(job.metadata.name), "trainer"),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [REPORT_PLURAL],
                "resourceNames": [report_name(job.metadata.name)],
                "verbs": list(REPORT_VERBS),
            },
            {
                "apiGroups": [GROUP],
                "resources": [PLURAL],
                "resourceNames": [job.metadata.name],
                "verbs": ["get"],
            },
        ],
    }


def report_role_binding(job: FineTuneJob) -> dict[str, Any]:
    name = service_account_name(job.metadata.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": object_meta(job, name, "trainer"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace_of(job)}],
    }


def report_channel(job: FineTuneJob) -> list[dict[str, Any]]:
    """In creation order: the report and RBAC exist before any pod that uses them."""
    return [
        report_object(job),
        trainer_service_account(job),
        report_role(job),
        report_role_binding(job),
    ]
