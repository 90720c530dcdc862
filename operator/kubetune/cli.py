"""The `kubetune` command line.

Each subcommand lives next to the code it drives and registers itself here through
`SUBCOMMANDS`; heavy imports (torch, ray, kopf) happen only inside the subcommand that
needs them, so `kubetune validate` stays fast and works without the trainer extras.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> "module:function" that adds the subparser; the function sets `handler` via set_defaults.
SUBCOMMANDS: dict[str, str] = {
    "validate": "kubetune.commands:add_validate",
    "plan": "kubetune.commands:add_plan",
    "manifests": "kubetune.commands:add_manifests",
    "eval": "kubetune_trainer.evaluation.cli:add_eval",
    "run": "kubetune_trainer.local_run:add_run",
    "predict": "kubetune_trainer.predict:add_predict",
    "render": "kubetune.commands:add_render",
    "operator": "kubetune.controller.cli:add_operator",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune",
        description="Fine-tune LLMs from one FineTuneJob resource: on Kubernetes or on this machine.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for target in SUBCOMMANDS.values():
        module_name, function_name = target.split(":")
        getattr(importlib.import_module(module_name), function_name)(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
