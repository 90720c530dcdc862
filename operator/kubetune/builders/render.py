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
from kubetune.planning import build_plan, scratch_gib, shape_of


def owned_objects(job: FineTuneJob, config: OperatorConfig) -> list[dict[str, Any]]:
    """Everything the operator creates for a valid job, in creation order: the
    NetworkPolicy first, so no Ray pod of the job is ever reachable without it. The worker
    pods' scratch is sized by the plan the operator makes (from the model's name: the
    operator reads no local files)."""
    plan = build_plan(job.spec, shape_of(job.spec.model.name), config, with_remedy=False)
    return [
        build_network_policy(job, config),
        *report_channel(job),
        build_rayjob(job, config, scratch_gib(plan)),
    ]
