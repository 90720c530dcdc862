"""Thin Kubernetes I/O for the operator (the official client, blocking; callers use threads).

Everything that decides *what* to write lives in the pure builders and status mapping; this
module only knows *how*: create-if-absent with adoption, status patches, events.
"""

from __future__ import annotations

import datetime
import os
import uuid
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kubetune.api.v1alpha1 import GROUP, KIND, PLURAL, VERSION

RAY_GROUP, RAY_VERSION, RAY_PLURAL = "ray.io", "v1", "rayjobs"
# A RayJob field the installed KubeRay CRD does not know is an error, never silently pruned
# (an older KubeRay would otherwise drop e.g. preRunningDeadlineSeconds without a word).
STRICT = "Strict"
COMPONENT = "kubetune-operator"


class ForeignOwnerError(RuntimeError):
    """An object with our name exists but belongs to someone else; never overwrite it."""


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
    """The API groups the operator writes to."""

    api: client.ApiClient

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def rbac(self) -> client.RbacAuthorizationV1Api:
        return client.RbacAuthorizationV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    # -- generic create / read ----------------------------------------------------------------

    def _create(self, obj: Any) -> None:
        """Create without decoding the answer (decoding into client models costs more CPU
        than the request itself, and the operator does not need the echo)."""
        ns = obj["metadata"]["namespace"]
        kind = obj["kind"]
        raw: Any = {"_preload_content": False}
        if kind == "ConfigMap":
            self.core.create_namespaced_config_map(ns, obj, **raw)
        elif kind == "ServiceAccount":
            self.core.create_namespaced_service_account(ns, obj, **raw)
        elif kind == "Role":
            self.rbac.create_namespaced_role(ns, obj, **raw)
        elif kind == "RoleBinding":
            self.rbac.create_namespaced_role_binding(ns, obj, **raw)
        elif kind == "RayJob":
            self.custom.create_namespaced_custom_object(
                RAY_GROUP, RAY_VERSION, ns, RAY_PLURAL, obj, field_validation=STRICT, **raw
            )
        else:
            raise ValueError(f"kubetune does not create {kind}")

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as a plain dict, or None when it does not exist."""
        try:
            if kind == "RayJob":
                return dict(
                    self.custom.get_namespaced_custom_object(  # type: ignore[call-overload]
                        RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, name
                    )
                )
            readers = {
                "ConfigMap": self.core.read_namespaced_config_map,
                "ServiceAccount": self.core.read_namespaced_service_account,
                "Role": self.rbac.read_namespaced_role,
                "RoleBinding": self.rbac.read_namespaced_role_binding,
            }
            obj = readers[kind](name, namespace)
            return dict(self.api.sanitize_for_serialization(obj))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def ensure(self, obj: dict[str, Any]) -> str:
        """Create `obj` unless it exists; adopt an existing one that is ours or unowned.

        Returns "created" or "adopted". Create-if-absent (not apply) because the spec of
        what we create never changes after creation: the FineTuneJob spec is immutable,
        except runPolicy.suspend, which `set_rayjob_suspend` patches.
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
        self._check_owner(obj, existing)
        return "adopted"

    def _check_owner(self, wanted: dict[str, Any], existing: dict[str, Any]) -> None:
        ours = {o["uid"] for o in wanted["metadata"].get("ownerReferences", [])}
        theirs = [
            o for o in existing["metadata"].get("ownerReferences") or [] if o.get("controller")
        ]
        if theirs and ours and theirs[0].get("uid") not in ours:
            raise ForeignOwnerError(
                f"{wanted['kind']} {wanted['metadata']['name']} already exists and is "
                f"controlled by {theirs[0].get('kind')} {theirs[0].get('name')} "
                f"(uid {theirs[0].get('uid')}); delete it or rename the FineTuneJob"
            )
        if not theirs and ours:
            self._patch_metadata(
                wanted["kind"], wanted, {"ownerReferences": wanted["metadata"]["ownerReferences"]}
            )

    def _patch_metadata(self, kind: str, wanted: dict[str, Any], meta: dict[str, Any]) -> None:
        ns, name = wanted["metadata"]["namespace"], wanted["metadata"]["name"]
        body = {"metadata": meta}
        if kind == "RayJob":
            self.custom.patch_namespaced_custom_object(
                RAY_GROUP, RAY_VERSION, ns, RAY_PLURAL, name, body, field_validation=STRICT
            )
        elif kind == "ConfigMap":
            self.core.patch_namespaced_config_map(name, ns, body)
        elif kind == "ServiceAccount":
            self.core.patch_namespaced_service_account(name, ns, body)
        elif kind == "Role":
            self.rbac.patch_namespaced_role(name, ns, body)
        elif kind == "RoleBinding":
            self.rbac.patch_namespaced_role_binding(name, ns, body)

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
        )

    def read_finetunejob(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(
                self.custom.get_namespaced_custom_object(  # type: ignore[call-overload]
                    GROUP, VERSION, namespace, PLURAL, name
                )
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch .status (the status subresource): the operator is its only writer."""
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _preload_content=False
        )

    def post_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the FineTuneJob, as `kubectl describe` shows it."""
        meta = job["metadata"]
        stamp = now_rfc3339()
        event: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name'][:200]}.{uuid.uuid4().hex[:12]}",
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
        self.core.create_namespaced_event(meta["namespace"], event, _preload_content=False)
