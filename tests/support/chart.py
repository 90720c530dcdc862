"""The Helm chart as tests see it: its rendered objects and its CRD files, so tests that
need the operator's ClusterRole or kopf's peering CRDs use exactly what users install."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "kubetune"
KUBE_VERSION = "v1.34.4"


def render_chart(helm: Path, *set_values: str) -> list[dict[str, Any]]:
    args = [str(helm), "template", "kt", str(CHART), "--kube-version", KUBE_VERSION]
    for value in set_values:
        args += ["--set", value]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def operator_rbac(helm: Path, namespaces: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The chart's RBAC objects, cluster-wide or (with namespaces) watchNamespaces mode."""
    values = [f"watchNamespaces={{{','.join(namespaces)}}}"] if namespaces else []
    return [d for d in render_chart(helm, *values) if d["kind"] in RBAC_KINDS]


def peering_crds_yaml() -> str:
    return (CHART / "crds" / "kopf-peering.yaml").read_text()
