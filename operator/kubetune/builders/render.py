"""Every object the operator creates for one valid FineTuneJob, in creation order. Pure.

`kubetune render` (kubetune.commands) prints exactly these, so a GitOps change can be
previewed and diffed before it is applied.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.builders.network_policy import build_network_policy
from kubetune.builders.rayjob import build_rayjob
from kubetune.builders.report_channel import report_channel
from kubetune.config import OperatorConfig


def owned_objects(job: FineTuneJob, config: OperatorConfig) -> list[dict[str, Any]]:
    """Everything the operator creates for a valid job, in creation order: the
    NetworkPolicy first, so no Ray pod of the job is ever reachable without it."""
    return [build_network_policy(job, config), *report_channel(job), build_rayjob(job, config)]
