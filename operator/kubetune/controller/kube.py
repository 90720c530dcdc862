"""Thin Kubernetes I/O for the operator (the official client, blocking; callers use threads).

Everything that decides *what* to write lives in the pure builders and status mapping; this
module only knows *how*: create-if-absent with adoption, status patches, events.
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kubetune.api.credentials import redact
from kubetune.api.report import REPORT_KIND, REPORT_PLURAL
from kubetune.api.v1alpha1 import GROUP, KIND, PLURAL, VERSION
from kubetune.builders.meta import JOB_UID_LABEL
from kubetune.builders.naming import rayjob_name

RAY_GROUP, RAY_VERSION, RAY_PLURAL = "ray.io", "v1", "rayjobs"
CUSTOM_KINDS = {
    "RayJob": (RAY_GROUP, RAY_VERSION, RAY_PLURAL),
    REPORT_KIND: (GROUP, VERSION, REPORT_PLURAL),
}
# A RayJob field the installed KubeRay CRD does not know is an error, never silently pruned
# (an older KubeRay would otherwise drop e.g. preRunningDeadlineSeconds without a word).
STRICT = "Strict"
COMPONENT = "kubetune-operator"
# (connect, read) seconds for every request: a hung API call must not hold a job's lock.
REQUEST_TIMEOUT = (5.0, 30.0)
TIMEOUT: Any = {"_request_timeout": REQUEST_TIMEOUT}
# Answers that will not change by asking again (the object or the request is wrong).
PERMANENT_STATUSES = frozenset({400, 404, 422})
# Kueue's Workload for a RayJob carries the RayJob's uid; v1beta2 since Kueue 0.15.
KUEUE_GROUP, KUEUE_VERSIONS, WORKLOADS = "kueue.x-k8s.io", ("v1beta2", "v1beta1"), "workloads"
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
POD_EVENTS_LIMIT = 50


class NameConflictError(RuntimeError):
    """An object with a child's name exists and is not controlled by this FineTuneJob (uid);
    kubetune never adopts, changes or deletes it."""


def api_status(error: BaseException) -> int | None:
    """The HTTP status of an API error; None for timeouts and connection errors."""
    return error.status if isinstance(error, ApiException) else None


def api_message(error: BaseException) -> str:
    """The API server's own message (its Status object), else the error's text; redacted,
    because it may quote the object it refused (and goes to status, events and logs)."""
    if isinstance(error, ApiException):
        try:
            message = json.loads(error.body or "{}").get("message")
        except (ValueError, AttributeError):
            message = None
        return redact(str(message or f"{error.status} {error.reason}"))
    return redact(f"{type(error).__name__}: {error}")


def is_permanent(error: BaseException) -> bool:
    return api_status(error) in PERMANENT_STATUSES


def load_api_client() -> client.ApiClient:
    """In-cluster credentials in a pod, else $KUBECONFIG / ~/.kube/config."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = 32  # handlers run in a thread pool
    return client.ApiClient(configuration)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Kube:
    """The API groups the operator writes to.

    Each API object is made once: the client resolves its classes through a lazy module
    `__getattr__` that takes Python's import lock, so making one per call serialized every
    worker thread on that lock under a burst of jobs.
    """

    api: client.ApiClient

    @cached_property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @cached_property
    def rbac(self) -> client.RbacAuthorizationV1Api:
        return client.RbacAuthorizationV1Api(self.api)

    @cached_property
    def networking(self) -> client.NetworkingV1Api:
        return client.NetworkingV1Api(self.api)

    @cached_property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    # -- generic create / read ----------------------------------------------------------------

    def _create(self, obj: Any) -> None:
        """Create without decoding the answer (decoding into client models costs more CPU
        than the request itself, and the operator does not need the echo)."""
        ns = obj["metadata"]["namespace"]
        kind = obj["kind"]
        raw: Any = {"_preload_content": False, **TIMEOUT}
        answer: Any
        if kind == REPORT_KIND:
            answer = self.custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, REPORT_PLURAL, obj, field_validation=STRICT, **raw
            )
        elif kind == "ServiceAccount":
            answer = self.core.create_namespaced_service_account(ns, obj, **raw)
        elif kind == "Role":
            answer = self.rbac.create_namespaced_role(ns, obj, **raw)
        elif kind == "RoleBinding":
            answer = self.rbac.create_namespaced_role_binding(ns, obj, **raw)
        elif kind == "NetworkPolicy":
            answer = self.networking.create_namespaced_network_policy(ns, obj, **raw)
        elif kind == "RayJob":
            answer = self.custom.create_namespaced_custom_object(
                RAY_GROUP, RAY_VERSION, ns, RAY_PLURAL, obj, field_validation=STRICT, **raw
            )
        else:
            raise ValueError(f"kubetune does not create {kind}")
        release(answer)

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as a plain dict, or None when it does not exist."""
        try:
            if kind in CUSTOM_KINDS:
                group, version, plural = CUSTOM_KINDS[kind]
                return dict(
                    self.custom.get_namespaced_custom_object(  # type: ignore[call-overload]
                        group, version, namespace, plural, name, **TIMEOUT
                    )
                )
            readers = {
                "ServiceAccount": self.core.read_namespaced_service_account,
                "Role": self.rbac.read_namespaced_role,
                "RoleBinding": self.rbac.read_namespaced_role_binding,
                "NetworkPolicy": self.networking.read_namespaced_network_policy,
            }
            obj = readers[kind](name, namespace, **TIMEOUT)
            return dict(self.api.sanitize_for_serialization(obj))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def ensure(self, obj: dict[str, Any]) -> str:
        """Create `obj` unless it exists; adopt an existing one only if it is ours.

        Returns "created" or "adopted". Create-if-absent (not apply) because the spec of
        what we create never changes after creation: the FineTuneJob spec is immutable,
        except runPolicy.suspend, which `set_rayjob_suspend` patches. "Ours" means a
        controller ownerReference to this FineTuneJob's uid: an object that merely has the
        name (unowned, or another owner's) raises NameConflictError and is left untouched.
        """
        try:
            self._create(obj)
            return "created"
        except ApiException as error:
            if error.status != 409:
                raise
        meta = obj["metadata"]
        existing = self.read(obj["kind"], meta["namespace"], meta["name"])
        if existing is None:  # deleted in between: let the caller retry
            raise RuntimeError(f"{obj['kind']} {meta['name']} vanished while adopting it")
        check_owner(obj, existing)
        return "adopted"

    # -- specific writes ----------------------------------------------------------------------

    def set_rayjob_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.custom.patch_namespaced_custom_object(
            RAY_GROUP,
            RAY_VERSION,
            namespace,
            RAY_PLURAL,
            name,
            {"spec": {"suspend": suspend}},
            field_validation=STRICT,
            **TIMEOUT,
        )

    def job_pods(self, namespace: str, job_uid: str) -> list[dict[str, Any]]:
        """The Ray pods of one job (KubeRay copies our template labels onto them)."""
        return items(
            self.core.list_namespaced_pod(
                namespace,
                label_selector=f"{JOB_UID_LABEL}={job_uid}",
                _preload_content=False,
                **TIMEOUT,
            )
        )

    def pod_warnings(self, namespace: str, pod_uid: str) -> list[dict[str, Any]]:
        """The Warning events about one pod (the kubelet's and the scheduler's words)."""
        return items(
            self.core.list_namespaced_event(
                namespace,
                field_selector=f"involvedObject.uid={pod_uid},type=Warning",
                limit=POD_EVENTS_LIMIT,
                _preload_content=False,
                **TIMEOUT,
            )
        )

    def workloads_of(self, namespace: str, rayjob_uid: str) -> list[dict[str, Any]]:
        """Kueue's Workloads for a RayJob (empty when Kueue made none, or is not installed)."""
        for version in KUEUE_VERSIONS:
            try:
                answer: Any = self.custom.list_namespaced_custom_object(
                    KUEUE_GROUP,
                    version,
                    namespace,
                    WORKLOADS,
                    label_selector=f"{KUEUE_JOB_UID_LABEL}={rayjob_uid}",
                    **TIMEOUT,
                )
            except ApiException as error:
                if error.status == 404:  # this version is not served
                    continue
                raise
            return [{"apiVersion": f"{KUEUE_GROUP}/{version}", **w} for w in answer["items"]]
        return []

    def set_workload_active(self, workload: dict[str, Any], active: bool) -> None:
        """Kueue's documented way to stop and restart an admitted job: Workload spec.active."""
        version = str(workload["apiVersion"]).rpartition("/")[2]
        meta = workload["metadata"]
        self.custom.patch_namespaced_custom_object(
            KUEUE_GROUP,
            version,
            meta["namespace"],
            WORKLOADS,
            meta["name"],
            {"spec": {"active": active}},
            **TIMEOUT,
        )

    def read_finetunejob(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(
                self.custom.get_namespaced_custom_object(  # type: ignore[call-overload]
                    GROUP, VERSION, namespace, PLURAL, name, **TIMEOUT
                )
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def delete_rayjob(self, namespace: str, name: str, uid: str) -> None:
        """Delete our RayJob (only that incarnation: the uid is a precondition); its Ray
        cluster goes with it. A RayJob already gone is fine."""
        try:
            answer = self.custom.delete_namespaced_custom_object(
                RAY_GROUP,
                RAY_VERSION,
                namespace,
                RAY_PLURAL,
                name,
                body=client.V1DeleteOptions(
                    preconditions=client.V1Preconditions(uid=uid),
                    propagation_policy="Background",
                ),
                _preload_content=False,
                **TIMEOUT,
            )
            release(answer)
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def replace_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> None:
        """Set .status (the status subresource; the operator is its only writer) as a whole,
        on this incarnation only: a JSON patch whose first step tests the uid, so a job
        deleted and created again under the same name is refused (422), never overwritten,
        and no key of an earlier status can stay behind."""
        answer = self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            [
                {"op": "test", "path": "/metadata/uid", "value": uid},
                {"op": "add", "path": "/status", "value": status},
            ],
            _content_type="application/json-patch+json",
            _preload_content=False,
            **TIMEOUT,
        )
        release(answer)

    def post_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the FineTuneJob, as `kubectl describe` shows it."""
        meta = job["metadata"]
        stamp = now_rfc3339()
        event: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": event_name(meta["name"]),
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": os.environ.get("HOSTNAME", COMPONENT),
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        answer = self.core.create_namespaced_event(
            meta["namespace"], event, _preload_content=False, **TIMEOUT
        )
        release(answer)


def items(answer: Any) -> list[dict[str, Any]]:
    """The items of a raw (`_preload_content=False`) list answer, as plain dicts (decoding
    into client models costs more than the request, and loses nothing we read)."""
    try:
        return list(json.loads(answer.data).get("items") or [])
    finally:
        release(answer)


def release(answer: Any) -> None:
    """Hand a raw (`_preload_content=False`) answer's connection back to the pool. Unread,
    the connection stays checked out, and every later request opens a new one: a TCP and
    TLS handshake each time, which cost more CPU than the request."""
    answer.drain_conn()
    answer.release_conn()


def event_name(job_name: str) -> str:
    """A valid, unique Event name for any legal job name (up to 253 characters, with dots):
    the job's DNS-1035 RayJob name (at most 47) and a random suffix."""
    return f"{rayjob_name(job_name)}.{uuid.uuid4().hex[:16]}"


def controller_uid(obj: dict[str, Any]) -> str | None:
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((str(o.get("uid")) for o in owners if o.get("controller")), None)


def check_owner(wanted: dict[str, Any], existing: dict[str, Any]) -> None:
    """Raise NameConflictError unless `existing` is controlled by the owner `wanted` names."""
    ours = controller_uid(wanted)
    theirs = controller_uid(existing)
    if ours is not None and theirs == ours:
        return
    owners = [o for o in existing["metadata"].get("ownerReferences") or [] if o.get("controller")]
    holder = (
        f"is controlled by {owners[0].get('kind')} {owners[0].get('name')} (uid {theirs})"
        if owners
        else "is not owned by this FineTuneJob"
    )
    raise NameConflictError(
        f"{wanted['kind']} {wanted['metadata']['namespace']}/{wanted['metadata']['name']} "
        f"already exists and {holder}"
    )
