"""`kubetune plan`: will a FineTuneJob fit, on how many nodes, how long, at what cost. Pure."""

from kubetune.planning.plan import (
    SKIP_FIT_CHECK_HINT,
    DataSize,
    Plan,
    build_plan,
    generation_devices,
    refused_for_fit,
    scratch_gib,
)
from kubetune.planning.render import plan_json, plan_summary, plan_table
from kubetune.planning.shapes import ModelShape, shape_of

__all__ = [
    "SKIP_FIT_CHECK_HINT",
    "DataSize",
    "ModelShape",
    "Plan",
    "build_plan",
    "generation_devices",
    "plan_json",
    "plan_summary",
    "plan_table",
    "refused_for_fit",
    "scratch_gib",
    "shape_of",
]
