"""The `cluster` tier: a real single-node Kubernetes on this machine (tests/support/cluster.py).

One cluster serves every test of this package (package scope, so it is gone before the other
tiers run): bringing it up costs a minute warm (and the image and binary builds on a cold
machine), while each test cleans up the objects it made. A cluster
already running from `make cluster` in this checkout is reused and left running; otherwise the
session starts one and removes it, leaving nothing behind, at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.support.cluster import LocalCluster, leftovers


@pytest.fixture(scope="package")
def local_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster()
    if cluster.is_up():
        print("reusing the running local cluster (.cluster)", file=sys.stderr)
        yield cluster
        return
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()
    left = leftovers(cluster.state)
    assert not left, "cluster-down left behind:\n" + "\n".join(left)
