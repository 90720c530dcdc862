"""Plays KubeRay for end-to-end tests by running each RayJob's entrypoint on this machine.

There are no kubelets here, so instead of a Ray cluster in pods, the entrypoint the operator
wrote into the RayJob runs as a local process (its `ray.init()` starts a local Ray), with
the environment KubeRay would give the driver: the head container's plain env values (never
secret values: those stay references), pvc:// volumes mapped to a local folder, and the
trainer ServiceAccount's own token as its credentials (TokenRequest), so the report reaches
the FineTuneJobReport through the RBAC the operator created. Status is written the way KubeRay
v1.6.2 does on real pods (tests/fixtures/kuberay): Initializing -> Running (no job status,
PENDING, RUNNING, then SUCCEEDED or FAILED) -> Complete/SUCCEEDED or Failed/FAILED (AppFailed).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support import transcripts

RAY_GROUP, RAY_VERSION, RAYJOBS = "ray.io", "v1", "rayjobs"


STATUS_WRITE_WAIT_S = 600.0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class LocalKubeRay:
    """Watches one namespace; each new RayJob's entrypoint runs once, in a thread."""

    def __init__(
        self,
        api: client.ApiClient,
        server: str,
        ca_path: Path,
        namespace: str,
        pvc_root: Path,
        workdir: Path,
        timeout_s: float = 600,
    ):
        self.api, self.server, self.ca_path = api, server, ca_path
        self.namespace, self.pvc_root, self.workdir = namespace, pvc_root, workdir
        self.timeout_s = timeout_s
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.logs: dict[str, str] = {}
        # every (jobDeploymentStatus, jobStatus) written, per RayJob, in order
        self.history: dict[str, list[tuple[str, str]]] = {}
        self._started: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> LocalKubeRay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                items = self.custom.list_namespaced_custom_object(
                    RAY_GROUP, RAY_VERSION, self.namespace, RAYJOBS, _request_timeout=10
                )["items"]
            except Exception:  # the API server may be down for a while: keep polling
                continue
            for rayjob in items:
                name = rayjob["metadata"]["name"]
                if name not in self._started:
                    self._started.add(name)
                    threading.Thread(target=self._run, args=(rayjob,), daemon=True).start()

    def _set_status(self, name: str, **status: Any) -> None:
        self.history.setdefault(name, []).append(transcripts.state_of(status))
        # KubeRay's reconciler retries a failed status write; so does the double, for as long
        # as a test's API server outage may last.
        deadline = time.monotonic() + STATUS_WRITE_WAIT_S
        while True:
            try:
                self.custom.patch_namespaced_custom_object_status(
                    RAY_GROUP,
                    RAY_VERSION,
                    self.namespace,
                    RAYJOBS,
                    name,
                    {"status": status},
                    _request_timeout=10,
                )
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def _run(self, rayjob: dict[str, Any]) -> None:
        name = rayjob["metadata"]["name"]
        self._set_status(
            name,
            jobDeploymentStatus="Initializing",
            startTime=_now(),
            rayClusterName=f"{name}-raycluster-local",
        )
        job_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self._set_status(name, jobDeploymentStatus="Running", dashboardURL="127.0.0.1:8265")
        self._set_status(name, jobDeploymentStatus="Running", jobStatus="PENDING", jobId=job_id)
        self._set_status(name, jobDeploymentStatus="Running", jobStatus="RUNNING")
        try:
            result = self._execute(rayjob)
        except Exception as error:  # the test should see why, not hang
            self.logs[name] = repr(error)
            self._set_status(name, jobDeploymentStatus="Running", jobStatus="FAILED")
            self._set_status(
                name,
                jobDeploymentStatus="Failed",
                jobStatus="FAILED",
                reason="AppFailed",
                message=repr(error),
                endTime=_now(),
                failed=1,
            )
            return
        self.logs[name] = result.stdout + result.stderr
        ended = "SUCCEEDED" if result.returncode == 0 else "FAILED"
        self._set_status(name, jobDeploymentStatus="Running", jobStatus=ended)
        if result.returncode == 0:
            self._set_status(
                name,
                jobDeploymentStatus="Complete",
                jobStatus="SUCCEEDED",
                endTime=_now(),
                succeeded=1,
                message="Job finished successfully.",
            )
        else:
            tail = (result.stderr or result.stdout)[-2000:]
            self._set_status(
                name,
                jobDeploymentStatus="Failed",
                jobStatus="FAILED",
                reason="AppFailed",
                message=f"Job entrypoint command failed with exit code {result.returncode}: {tail}",
                endTime=_now(),
                failed=1,
            )

    def _execute(self, rayjob: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        argv = shlex.split(rayjob["spec"]["entrypoint"])
        if argv[0] == "python":
            argv[0] = sys.executable
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "HF_TOKEN")}
        env.update(self._head_env(rayjob))
        env.update(
            KUBECONFIG=str(self._trainer_kubeconfig(rayjob)),
            KUBETUNE_PVC_ROOT=str(self.pvc_root),
            RAY_AUTH_MODE="disabled",
            POD_NAMESPACE=self.namespace,
        )
        return subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=self.timeout_s,
            cwd=self.workdir,
            check=False,
        )

    @staticmethod
    def _head_env(rayjob: dict[str, Any]) -> dict[str, str]:
        container = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"][
            "containers"
        ][0]
        return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}

    def _trainer_kubeconfig(self, rayjob: dict[str, Any]) -> Path:
        # The pods of a real Ray cluster run as the head template's service account.
        account = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"][
            "serviceAccountName"
        ]
        token = self._token_for(account)
        path = self.workdir / f"{rayjob['metadata']['name']}.kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "trainer",
                    "clusters": [
                        {
                            "name": "local",
                            "cluster": {
                                "server": self.server,
                                "certificate-authority": str(self.ca_path),
                            },
                        }
                    ],
                    "users": [{"name": "trainer", "user": {"token": token}}],
                    "contexts": [
                        {
                            "name": "trainer",
                            "context": {
                                "cluster": "local",
                                "user": "trainer",
                                "namespace": self.namespace,
                            },
                        }
                    ],
                }
            )
        )
        return path

    def _token_for(self, account: str) -> str:
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                return str(
                    self.core.create_namespaced_service_account_token(
                        account, self.namespace, request
                    ).status.token
                )
            except ApiException as error:
                if error.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
