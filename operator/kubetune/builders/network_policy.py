"""The job's NetworkPolicy: who may connect to its Ray pods. Pure.

Ray's ports (GCS 6379, dashboard and Jobs API 8265, object manager, workers) are open between
the job's own pods: head, workers and the submitter carry the job's label. From outside the
job only the KubeRay operator's namespace may connect, and only to 8265: KubeRay polls the
head's dashboard for the job's status, and blocking it would leave the RayJob Running forever.
Everything else is refused: other namespaces, and pods of this namespace that are not the
job's. Egress is left open (model and data downloads, object storage, the API server).

The Ray token (KubeRay's `authOptions`) is the second lock on 8265; this policy keeps the
other ports, which Ray does not authenticate, out of reach. A NetworkPolicy needs a network
plugin that enforces it (Calico, Cilium, the VPC CNI's policy agent on EKS); without one it
is accepted and has no effect.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.builders.meta import JOB_LABEL, MANAGED_BY, job_label_value, object_meta
from kubetune.builders.naming import rayjob_name
from kubetune.config import OperatorConfig

DASHBOARD_PORT = 8265
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server


def network_policy_name(job_name: str) -> str:
    return f"{rayjob_name(job_name)}-ray"


def job_pods(job: FineTuneJob) -> dict[str, Any]:
    return {
        "matchLabels": {
            JOB_LABEL: job_label_value(job.metadata.name),
            "app.kubernetes.io/managed-by": MANAGED_BY,
        }
    }


def build_network_policy(job: FineTuneJob, config: OperatorConfig) -> dict[str, Any]:
    kuberay = {"matchLabels": {NAMESPACE_NAME_LABEL: config.kuberay_namespace}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(job, network_policy_name(job.metadata.name), "network-policy"),
        "spec": {
            "podSelector": job_pods(job),
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": job_pods(job)}]},
                {
                    "from": [{"namespaceSelector": kuberay}],
                    "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}],
                },
            ],
        },
    }
