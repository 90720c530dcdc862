"""A real S3-compatible server on loopback for the storage tests: moto in server mode, from a
venv of its own (hack/s3server/install.sh; cached outside the clone)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.controlplane import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "hack" / "s3server" / "install.sh"
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:<port>

    def environment(self) -> dict[str, str]:
        """What a process needs to use this server as s3:// (the AWS SDKs' own names; moto
        takes any key)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "kubetune-test",
            "AWS_SECRET_ACCESS_KEY": "kubetune-test-secret",
            "AWS_REGION": "us-east-1",
        }

    def create_bucket(self, name: str) -> str:
        from pyarrow import fs

        filesystem = fs.S3FileSystem(
            endpoint_override=self.endpoint.removeprefix("http://"),
            scheme="http",
            access_key="kubetune-test",
            secret_key="kubetune-test-secret",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        filesystem.create_dir(name)
        return f"s3://{name}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_program() -> str:
    out = subprocess.run(
        [str(INSTALL_SCRIPT)], check=True, capture_output=True, text=True, timeout=900
    )
    return out.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def running_s3_server(log: Path) -> Iterator[S3Server]:
    program = server_program()
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        process = subprocess.Popen(
            [program, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text()[-2000:]
                    raise RuntimeError(f"the S3 server did not start: {tail}") from None
                time.sleep(0.2)
        yield S3Server(endpoint)
    finally:
        stop_process(process, timeout_s=10)
