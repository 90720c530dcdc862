"""Prometheus metrics of the operator (served on KUBETUNE_METRICS_PORT at /metrics)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from time import perf_counter
from typing import get_args

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from kubetune.api.v1alpha1 import Phase

PHASES: tuple[Phase, ...] = get_args(Phase)

JOBS = Gauge("kubetune_finetunejobs", "FineTuneJobs seen by this operator, by phase", ["phase"])
RECONCILE_SECONDS = Histogram(
    "kubetune_reconcile_duration_seconds",
    "Time to reconcile one event",
    ["step"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ERRORS = Counter("kubetune_reconcile_errors_total", "Reconciles that raised", ["step"])
WRITES = Counter("kubetune_api_writes_total", "API writes made by kubetune's handlers", ["kind"])


@contextmanager
def timed(step: str) -> Iterator[None]:
    """Observe latency, and count the error when the block raises."""
    started = perf_counter()
    try:
        yield
    except Exception:
        ERRORS.labels(step).inc()
        raise
    finally:
        RECONCILE_SECONDS.labels(step).observe(perf_counter() - started)


def publish_phases(counts: Mapping[str, int]) -> None:
    """Set the phase gauge from the operator's per-phase job counts."""
    for phase in PHASES:
        JOBS.labels(phase).set(counts.get(phase, 0))


def serve(port: int, address: str) -> None:
    if port:
        start_http_server(port, addr=address)
