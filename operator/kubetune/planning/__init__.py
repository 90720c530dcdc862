"""`kubetune plan`: will a FineTuneJob fit, on how many nodes, how long, at what cost. Pure."""

from kubetune.planning.plan import DataSize, Plan, build_plan, generation_devices
from kubetune.planning.render import plan_json, plan_summary, plan_table
from kubetune.planning.shapes import ModelShape, shape_of

__all__ = [
    "DataSize",
    "ModelShape",
    "Plan",
    "build_plan",
    "generation_devices",
    "plan_json",
    "plan_summary",
    "plan_table",
    "shape_of",
]
