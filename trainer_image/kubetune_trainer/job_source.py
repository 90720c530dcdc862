"""The trainer reads its own FineTuneJob from the API server (in a cluster).

The spec is not passed on the command line: a valid spec with long templates would exceed
Linux's 128 KiB argument limit, and `ray job submit` would fail with a misleading error. The
trainer's ServiceAccount may `get` exactly this one FineTuneJob (a Role with
`resourceNames`), nothing else. The uid the operator put into the entrypoint must match: a
job deleted and created again under the same name is another job, and this run stops.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION
from kubetune_trainer.reporting import REQUEST_TIMEOUT, load_api_client, with_retries

# A trainer that starts while the API server restarts waits for it this long.
API_OUTAGE_WAIT_S = 600.0


class JobSourceError(RuntimeError):
    """The FineTuneJob cannot be read, or it is not the job this run was started for."""


def read_own_job(name: str, namespace: str, uid: str | None, api: Any = None) -> dict[str, Any]:
    """The FineTuneJob `namespace/name` as the API server holds it (checked against `uid`)."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api or load_api_client())

    def get() -> dict[str, Any]:
        return dict(
            custom.get_namespaced_custom_object(  # type: ignore[call-overload]
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT
            )
        )

    try:
        job = with_retries(get, outage_wait_s=API_OUTAGE_WAIT_S)
    except Exception as error:
        status = getattr(error, "status", None)
        raise JobSourceError(
            f"cannot read FineTuneJob {namespace}/{name}"
            + (f" (HTTP {status})" if status else f": {error}")
        ) from None
    found = str((job.get("metadata") or {}).get("uid") or "")
    if uid and found != uid:
        raise JobSourceError(
            f"FineTuneJob {namespace}/{name} now has uid {found}, not {uid}: it was deleted "
            f"and created again, so this run stops"
        )
    return job
