"""Run the operator in-process with the KUBETUNE_* configuration (`kubetune operator`).

Equivalent to `kopf run -m kubetune.controller.handlers` plus the namespace, peering and
liveness options taken from the environment, so a Deployment needs no command-line flags.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import kopf

from kubetune.config import OperatorConfig


def run(verbose: bool = False) -> int:
    config = OperatorConfig.from_env()
    kopf.configure(verbose=verbose)
    if not verbose:  # kopf logs every handler call at INFO: ~1 line per watch event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    import kubetune.controller.handlers  # noqa: F401  (registers the handlers)

    asyncio.run(
        kopf.operator(
            clusterwide=not config.namespaces,
            namespaces=list(config.namespaces),
            standalone=not config.peering,
            peering_name=config.peering or None,
            priority=config.peering_priority if config.peering else None,
            liveness_endpoint=f"http://{config.bind_address}:{config.health_port}/healthz",
            memo=kopf.Memo(config=config),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(run(verbose="--verbose" in sys.argv))
