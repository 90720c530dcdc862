"""OperatorConfig: documented defaults and environment parsing."""

from __future__ import annotations

import pytest

from kubetune.config import OperatorConfig

pytestmark = pytest.mark.unit


def test_defaults_when_environment_is_empty() -> None:
    config = OperatorConfig.from_env({})
    assert config.trainer_image == OperatorConfig().trainer_image
    assert 1 <= config.peering_priority <= 1_000_000 and config.peering_lifetime == 60
    assert config.namespaces == () and config.peering == ""
    assert (config.cpu_headroom, config.memory_headroom) == (0.10, 0.10)
    assert config.active_deadline_seconds is None and config.ttl_seconds_after_finished == 600
    assert config.submission_mode == "K8sJobMode"
    assert config.pre_running_deadline_seconds == 1800  # nothing waits forever by default


def test_environment_overrides() -> None:
    config = OperatorConfig.from_env(
        {
            "KUBETUNE_NAMESPACES": "team-a, team-b ,",
            "KUBETUNE_TRAINER_IMAGE": "repo/t:1",
            "KUBETUNE_CPU_HEADROOM": "0.2",
            "KUBETUNE_MEMORY_HEADROOM": "0.05",
            "KUBETUNE_ACTIVE_DEADLINE_SECONDS": "3600",
            "KUBETUNE_PRE_RUNNING_DEADLINE_SECONDS": "0",
            "KUBETUNE_TTL_SECONDS_AFTER_FINISHED": "0",
            "KUBETUNE_SUBMISSION_MODE": "HTTPMode",
            "KUBETUNE_PEERING": "kubetune",
            "KUBETUNE_HEALTH_PORT": "1",
            "KUBETUNE_METRICS_PORT": "0",
            "KUBETUNE_BIND_ADDRESS": "127.0.0.1",
        }
    )
    assert config.namespaces == ("team-a", "team-b")
    assert config.trainer_image == "repo/t:1"
    assert (config.cpu_headroom, config.memory_headroom) == (0.2, 0.05)
    assert config.active_deadline_seconds == 3600
    assert config.pre_running_deadline_seconds is None  # 0 disables it
    assert (
        OperatorConfig.from_env(
            {"KUBETUNE_PRE_RUNNING_DEADLINE_SECONDS": "600"}
        ).pre_running_deadline_seconds
        == 600
    )
    assert config.ttl_seconds_after_finished == 0  # delete the cluster at once
    assert (config.submission_mode, config.peering) == ("HTTPMode", "kubetune")
    assert (config.health_port, config.metrics_port, config.bind_address) == (1, 0, "127.0.0.1")


@pytest.mark.parametrize(
    "env", [{"KUBETUNE_CPU_HEADROOM": "0.95"}, {"KUBETUNE_SUBMISSION_MODE": "Magic"}]
)
def test_bad_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        OperatorConfig.from_env(env)
