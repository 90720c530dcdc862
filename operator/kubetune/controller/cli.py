"""`kubetune operator`: run the kopf operator (same as `kopf run -m kubetune.controller.handlers`)."""

from __future__ import annotations

import argparse
from typing import Any


def run_operator(args: argparse.Namespace) -> int:
    from kubetune.controller.runner import run

    return run(verbose=args.verbose)


def add_operator(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "operator", help="run the FineTuneJob operator (configured by KUBETUNE_* variables)"
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.set_defaults(handler=run_operator)
