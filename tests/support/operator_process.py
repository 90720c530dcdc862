"""The operator as a real subprocess, exactly how its Deployment runs it
(`python -m kubetune.controller.runner`), with health and metrics ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.controlplane import ControlPlane

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`python -m kubetune.controller.runner` watching `namespaces`, with health/metrics ports."""

    def __init__(
        self,
        control_plane: ControlPlane,
        namespaces: str,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.command = command or [sys.executable, "-m", "kubetune.controller.runner"]
        self.health_port, self.metrics_port = free_port(), free_port()
        self.env = {
            **control_plane.env(),
            "KUBETUNE_NAMESPACES": namespaces,
            "KUBETUNE_HEALTH_PORT": str(self.health_port),
            "KUBETUNE_METRICS_PORT": str(self.metrics_port),
            "KUBETUNE_BIND_ADDRESS": "127.0.0.1",
            "KUBETUNE_TRAINER_IMAGE": "ghcr.io/kubetune/trainer:test",
            "PYTHONPATH": f"{REPO_ROOT / 'operator'}{os.pathsep}{REPO_ROOT}",
            **(extra_env or {}),
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> OperatorProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"operator did not become healthy:\n{self.logs()[-4000:]}")
            time.sleep(0.2)
        return self

    def healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, like a node loss or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
