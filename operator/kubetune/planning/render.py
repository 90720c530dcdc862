"""A plan as the table `kubetune plan` prints, and as JSON (`-o json`)."""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1 import PlanPhase, PlanSummary
from kubetune.planning.memory import GIB
from kubetune.planning.plan import Plan, gib, scratch_gib


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "verdict": plan.verdict,
        "reason": plan.reason,
        "remedy": plan.remedy,
        "modelParameters": plan.model_parameters,
        "nodes": plan.nodes,
        "gpus": plan.gpus,
        "phases": [
            {
                "name": p.name,
                "devices": p.devices,
                "deviceBytes": p.device.items,
                "hostBytesPerNode": p.host.items,
                "diskBytesPerNode": p.disk.items,
            }
            for p in plan.phases
        ],
        "checks": [
            {"phase": c.phase, "resource": c.resource, "needsBytes": c.needs, "hasBytes": c.has}
            for c in plan.checks
        ],
        "storageBytesPerCheckpoint": plan.storage_per_checkpoint,
        "storageBytesTotal": plan.storage_total,
        "scratchGiBPerWorkerPod": scratch_gib(plan),
        "hours": plan.hours,
        "costUSD": plan.cost_usd,
        "price": plan.price_note,
        "notes": plan.notes,
    }


def plan_summary(plan: Plan | None) -> PlanSummary:
    """The plan as `.status.plan` holds it."""
    if plan is None:
        return PlanSummary(
            verdict="Unknown",
            message="model size unknown (not a builtin or Llama-2 name): not planned",
        )
    return PlanSummary(
        verdict=plan.verdict,
        message=plan.reason,
        remedy=plan.remedy,
        nodes=plan.nodes,
        gpus=plan.gpus,
        storage_gib=round(plan.storage_total / GIB, 1),
        scratch_gib=scratch_gib(plan),
        phases=[
            PlanPhase(
                name=p.name,
                devices=p.devices,
                device_gib=round(p.device.total / GIB, 1),
                host_gib=round(p.host.total / GIB, 1),
                disk_gib=round(p.disk.total / GIB, 1),
            )
            for p in plan.phases
        ],
    )


def _cell(n: int) -> str:
    return gib(n) if n else "-"


def plan_table(plan: Plan, title: str) -> str:
    lines = [
        title,
        f"model: {plan.model_parameters / 1e9:,.2f}B parameters; {plan.nodes} node(s), {plan.gpus} GPU(s)",
        f"{'phase':<12}{'devices':>8}{'GiB/device':>12}{'host GiB/node':>15}{'disk GiB/node':>15}",
    ]
    for p in plan.phases:
        device = p.device.total
        lines.append(
            f"{p.name:<12}{p.devices:>8}{_cell(device):>12}{_cell(p.host.total):>15}{_cell(p.disk.total):>15}"
        )
    limits = {c.resource.split(" (")[0]: c.has for c in plan.checks if c.has}
    if limits:
        lines.append(
            "available: " + ", ".join(f"{k} {v / GIB:,.1f} GiB" for k, v in limits.items())
        )
    lines.append(
        f"storage: {gib(plan.storage_per_checkpoint)} GiB per checkpoint (model and resume "
        f"state), up to {gib(plan.storage_total)} GiB in all; scratch: {scratch_gib(plan)} GiB "
        "node-local per worker pod"
    )
    if plan.hours is not None:
        cost = f", about {plan.cost_usd:,.0f} USD at {plan.price_note}" if plan.cost_usd else ""
        lines.append(f"time: about {plan.hours:,.1f} h{cost}")
    lines += [f"note: {n}" for n in plan.notes]
    lines.append(f"verdict: {plan.verdict} — {plan.reason}")
    if plan.remedy:
        lines.append(f"remedy: {plan.remedy}")
    return "\n".join(lines)
