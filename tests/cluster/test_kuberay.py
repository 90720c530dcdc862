"""The real KubeRay on the local cluster runs the schema the fast tiers validate against."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.support.cluster import KUBERAY_NAMESPACE, LocalCluster

# The first test of the package pays for bringing the cluster up, which on a cold machine
# includes building the binaries and images (tens of minutes): pytest-timeout counts fixtures.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(5400)]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "crds" / "ray.io_rayjobs.yaml"


def test_rayjob_crd_fixture_is_the_installed_kuberay_schema(local_cluster: LocalCluster) -> None:
    installed = json.loads(
        local_cluster.kubectl("get", "crd", "rayjobs.ray.io", "-o", "json").stdout
    )
    fixture = yaml.safe_load(FIXTURE.read_text())
    assert installed["spec"]["versions"][0]["schema"] == fixture["spec"]["versions"][0]["schema"], (
        "tests/fixtures/crds/ray.io_rayjobs.yaml differs from the KubeRay the cluster runs: "
        "run hack/kuberay/update-fixtures.sh"
    )


def test_kuberay_operator_is_the_pinned_build(local_cluster: LocalCluster) -> None:
    deploy = json.loads(
        local_cluster.kubectl(
            "get", "deploy", "-n", KUBERAY_NAMESPACE, "kuberay-operator", "-o", "json"
        ).stdout
    )
    image = deploy["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == local_cluster.images["kuberay"]
    assert deploy["status"].get("readyReplicas") == 1
