"""Fixtures for tests that need a real Kubernetes API server (marked `controlplane`).

One control plane serves the whole session: starting it costs tens of seconds, while a fresh
namespace per test is enough isolation. Nothing here skips: a control plane that cannot be
built or started fails the tests that asked for it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.support.controlplane import ControlPlane, Kubectl, ensure_binaries, temporary_namespace
from tests.support.operator_process import OperatorProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
CRD_FILES = sorted((REPO_ROOT / "crds").glob("*.yaml")) + sorted(
    (REPO_ROOT / "tests" / "fixtures" / "crds").glob("*.yaml")
)

_binaries: Path | BaseException | None = None


def _get_binaries() -> Path:
    global _binaries
    if _binaries is None:
        try:
            _binaries = ensure_binaries()
        except Exception as exc:
            _binaries = exc
    if isinstance(_binaries, BaseException):
        raise _binaries
    return _binaries


def _needs_control_plane(item: pytest.Item) -> bool:
    return "control_plane" in getattr(item, "fixturenames", ())


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the control plane, so `-m "not controlplane"` can't start one."""
    for item in items:
        if _needs_control_plane(item):
            item.add_marker(pytest.mark.controlplane)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries before any test runs, so a cold build (10-20 min) is not counted
    against the first test's timeout. Errors are kept and raised by the fixture instead."""
    if not any(_needs_control_plane(i) for i in session.items):
        return
    capman = session.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        try:
            _get_binaries()
        except Exception as exc:
            print(f"\ncontrol plane binaries unavailable: {exc}", file=sys.stderr)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    with ControlPlane(_get_binaries()) as cp:
        cp.install_crds(CRD_FILES)
        print(
            f"control plane started in {cp.start_seconds:.1f} s, CRDs established in"
            f" {cp.crd_seconds:.1f} s",
            file=sys.stderr,
        )
        yield cp


@pytest.fixture(scope="session")
def kube_api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig_path))
    yield api
    api.close()


@pytest.fixture
def namespace(kube_api: client.ApiClient) -> Iterator[str]:
    """A fresh kt-* namespace: the session operator (`operator_process`) watches kt-*."""
    with temporary_namespace(kube_api, "kt") as name:
        yield name


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    """`kubectl(*args, input=None, check=True)` with the built kubectl and our kubeconfig."""
    return control_plane.kubectl


@pytest.fixture(scope="session")
def operator_process(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One operator for the session, watching the per-test namespaces (kt-*)."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(control_plane, "kt-*", log).start()
    yield op
    op.stop()
