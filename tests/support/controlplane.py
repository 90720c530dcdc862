"""A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) for tests.

The binaries are built from the Go module proxy by hack/controlplane/build.sh, because no
release download can be reached here. The API server runs with real TLS, RBAC and a static admin
token so that clients exercise the same code paths as against a real cluster; the controller
manager runs only the controllers whose absence would make a cluster behave unlike a real one
(garbage collection, namespace deletion, service-account tokens).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "controlplane" / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started."""


def ensure_binaries() -> Path:
    """Return the directory with the control-plane binaries, building them on a cache miss.

    A cold build takes 10-20 minutes on 2 cores, so the script's progress is passed through
    and the build's duration printed, to make a slow run explainable; a warm cache costs only
    the script's key check.
    """
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    log: list[str] = []
    for line in proc.stderr:  # stdout is a single line, so reading it last cannot deadlock
        sys.stderr.write(line)
        log.append(line)
    stdout = proc.stdout.read()
    if proc.wait() != 0:
        raise ControlPlaneError(
            f"{BUILD_SCRIPT} failed (exit {proc.returncode}):\n{_tail(''.join(log), 40)}"
        )
    bin_dir = Path(stdout.strip().splitlines()[-1])
    missing = [b for b in BINARIES if not (bin_dir / b).is_file()]
    if missing:
        raise ControlPlaneError(f"{BUILD_SCRIPT} did not produce {missing} in {bin_dir}")
    if any("building control plane" in line for line in log):
        print(
            f"control plane cold build took {time.monotonic() - started:.0f} s ({bin_dir})",
            file=sys.stderr,
        )
    return bin_dir


@contextlib.contextmanager
def temporary_namespace(api: Any, prefix: str) -> Iterator[str]:
    """A uniquely named namespace, deleted afterwards (the namespace controller empties it).

    The prefix decides which operator sees it: the session operator watches kt-* only."""
    from kubernetes import client

    name = f"{prefix}-{secrets.token_hex(5)}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl run whose message includes kubectl's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr}"


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1 with free ports.

    Use as a context manager or call start()/stop(). `start_seconds` is how long start() took
    (until the API server is ready and the controller manager is healthy), `crd_seconds` how
    long install_crds() took.
    """

    def __init__(self, bin_dir: Path | str, startup_timeout: float = 120) -> None:
        self.bin_dir = Path(bin_dir)
        self.startup_timeout = startup_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="kubetune-cp-"))
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.ca_path = self.dir / "ca.crt"
        self.kubeconfig_path = self.dir / "kubeconfig"
        self.start_seconds = 0.0
        self.crd_seconds = 0.0
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._etcd_url = ""

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment for subprocesses: our kubeconfig, and our kubectl first on PATH."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig_path)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl (not whatever is on PATH) against this control plane."""
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def install_crds(self, paths: Sequence[Path], timeout: float = 60) -> None:
        """Install CRDs and wait until they are Established.

        Server-side apply, because the real KubeRay CRDs are too large for the
        last-applied-configuration annotation that client-side apply writes.
        """
        started = time.monotonic()
        if not paths:
            return
        files = [arg for p in paths for arg in ("-f", str(p))]
        self.kubectl("apply", "--server-side", "--force-conflicts", *files)
        # kubectl wait errors out instead of waiting while a new CRD has no conditions yet.
        deadline = started + timeout
        while True:
            wait = ("wait", "--for=condition=Established", "--timeout=10s", *files)
            if time.monotonic() > deadline:
                self.kubectl(*wait)
                break
            if self.kubectl(*wait, check=False).returncode == 0:
                break
            time.sleep(0.2)
        self.crd_seconds = time.monotonic() - started

    def start(self) -> None:
        started = time.monotonic()
        try:
            self._write_pki()
            self._write_kubeconfig()
            self._etcd_url = self._start_etcd()
            self._start_apiserver(self._etcd_url)
            self._start_controller_manager()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Stop in reverse start order: an API server whose etcd is already gone takes ~15 s
        to give up, one stopped first exits in about a second."""
        for _, proc in reversed(self._procs):
            stop_process(proc, timeout_s=15)
        self._procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    @contextlib.contextmanager
    def apiserver_down(self) -> Iterator[None]:
        """An API server outage: killed (SIGKILL: a crash, open watches cut) on entry, started
        again on the same port, certificates and etcd on exit."""
        for index, (name, proc) in enumerate(self._procs):
            if name == "kube-apiserver":
                proc.kill()
                proc.wait(timeout=30)
                del self._procs[index]
                break
        try:
            yield
        finally:
            self._start_apiserver(self._etcd_url)

    # -- processes -----------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.dir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [str(self.bin_dir / name), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        log.close()
        self._procs.append((name, proc))
        return proc

    def _wait(self, name: str, proc: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while not ready():
            if proc.poll() is not None:
                self._fail(name, f"exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                self._fail(name, f"not ready after {self.startup_timeout:.0f} s")
            time.sleep(0.2)

    def _fail(self, name: str, why: str) -> None:
        log = (self.dir / f"{name}.log").read_text(errors="replace")
        raise ControlPlaneError(f"{name} {why}; last lines of its log:\n{_tail(log, 30)}")

    def _start_etcd(self) -> str:
        client, peer = _free_port(), _free_port()
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        proc = self._spawn(
            "etcd",
            [
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait("etcd", proc, lambda: http_ok(f"{client_url}/health"))
        return client_url

    def _start_apiserver(self, etcd_url: str) -> None:
        d = self.dir
        proc = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={d / 'apiserver-certs'}",
                f"--tls-cert-file={d / 'apiserver.crt'}",
                f"--tls-private-key-file={d / 'apiserver.key'}",
                f"--token-auth-file={d / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={self.server}",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                "--enable-priority-and-fairness=false",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )
        self._wait(
            "kube-apiserver",
            proc,
            lambda: http_ok(f"{self.server}/readyz", self.ca_path, self.token),
        )

    def _start_controller_manager(self) -> None:
        port = _free_port()
        proc = self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig_path}",
                "--controllers=garbagecollector,namespace,serviceaccount-token",
                f"--service-account-private-key-file={self.dir / 'sa.key'}",
                f"--root-ca-file={self.ca_path}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.dir / 'kcm-certs'}",
                "--profiling=false",
            ],
        )
        self._wait(
            "kube-controller-manager", proc, lambda: http_ok(f"https://127.0.0.1:{port}/healthz")
        )

    # -- files ---------------------------------------------------------------------------------

    def _write_pki(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubetune-test-ca")])
        ca_cert = (
            cert_builder(ca_name, ca_name, ca_key, now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
        sans = [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes.default.svc"),
        ]
        cert = (
            cert_builder(name, ca_name, key, now)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        (self.dir / "apiserver.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (self.dir / "apiserver.key").write_bytes(key_pem(key))
        (self.dir / "sa.key").write_bytes(key_pem(sa_key))
        (self.dir / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        (self.dir / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')

    def _write_kubeconfig(self) -> None:
        ca = base64.b64encode(self.ca_path.read_bytes()).decode()
        self.kubeconfig_path.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: kubetune-test
  cluster:
    server: {self.server}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    token: {self.token}
contexts:
- name: kubetune-test
  context:
    cluster: kubetune-test
    user: admin
current-context: kubetune-test
"""
        )


def cert_builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _die_with_parent() -> None:
    """Have Linux kill the child when the test process dies, so no control plane outlives it."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_ok(url: str, ca_path: Path | None = None, token: str | None = None) -> bool:
    """True when url answers 200; without ca_path, https is not verified (self-signed health)."""
    if ca_path is not None:
        ctx = ssl.create_default_context(cafile=str(ca_path))
    else:
        ctx = ssl._create_unverified_context()
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])
