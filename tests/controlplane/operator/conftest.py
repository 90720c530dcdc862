"""Fixtures for the operator's control-plane tests: the operator as a real subprocess
(exactly how a Deployment runs it) and the KubeRay double for the test's namespace."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.support.controlplane import ControlPlane
from tests.support.kuberay_double import KubeRayDouble
from tests.support.operator_process import OperatorProcess


@pytest.fixture
def kuberay(
    control_plane: ControlPlane, kube_api: client.ApiClient, namespace: str
) -> Iterator[KubeRayDouble]:
    double = KubeRayDouble(kube_api, namespace, control_plane.server, control_plane.ca_path).start()
    yield double
    double.stop()


@pytest.fixture
def custom(kube_api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> None:
    """On failure, attach the operator's log tail (the first place to look)."""
    if call.when == "call" and call.excinfo is not None:
        op = item.funcargs.get("operator_process") if hasattr(item, "funcargs") else None
        if isinstance(op, OperatorProcess):
            item.add_report_section("call", "operator log", op.logs()[-6000:])
