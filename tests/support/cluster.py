"""A real single-node Kubernetes on this machine: `make cluster` and the `cluster` test tier.

Unlike the control-plane tier's envtest-style API server, this is a cluster pods can use: the
API server listens on the pod bridge's gateway (reachable from every pod network namespace),
keeps the `kubernetes` Service endpoint, authorizes with Node,RBAC and admits with
ServiceAccount and NodeRestriction, so pods get tokens and reach the API through the Service.
Beside it: kube-controller-manager (default controllers), kube-scheduler, containerd + runc,
the kubelet, kube-proxy (iptables), CoreDNS (cluster.local only), the real KubeRay operator and
the kubetune chart installed with helm.

Every binary is built from the Go module proxy (hack/*/build.sh), every image here (see
cluster_images.py); nothing reaches outside this machine: containerd's registries point at a
closed loopback port, CoreDNS does not forward, Ray runs with usage stats off and the HF
libraries offline. Daemons outlive the command that starts them (so `make cluster` returns);
their pids, logs, configuration and certificates live in the state folder (`.cluster/`).
`down()` stops them and removes everything they left on the machine: containers, mounts,
network namespaces, the bridge, CNI state and the KUBE-* iptables chains.

Usage: python -m tests.support.cluster up|down|status [--state DIR]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.chart import CHART
from tests.support.cluster_images import CACHE, ImageBuilder
from tests.support.controlplane import cert_builder, ensure_binaries, http_ok, key_pem

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE = REPO_ROOT / ".cluster"
DATASETS = REPO_ROOT.parent / "shared" / "datasets"
MANIFESTS = REPO_ROOT / "hack" / "cluster" / "manifests"

# One cluster per machine: these names and addresses are fixed, and `down` looks for them.
BRIDGE = "kt0"
POD_CIDR = ipaddress.ip_network("10.244.0.0/24")
GATEWAY = "10.244.0.1"  # the bridge's address: the API server and the kubelet listen here
SERVICE_CIDR = "10.96.0.0/24"
API_SERVICE_IP = "10.96.0.1"
DNS_IP = "10.96.0.10"
API_PORT = 6443
ETCD_PORT, ETCD_PEER_PORT = 23790, 23800
CLOSED_PORT = 9  # discard: nothing listens there, so any image pull fails at once
NODE_NAME = "kubetune-node"
NODE_INSTANCE_TYPE = "kubetune-local"
CNI_NETWORK = "kubetune"
IPTABLES_PREFIXES = ("KUBE-", "CNI-")
CONTAINERD_ROOT = CACHE / "containerd"  # images survive `down`, so a warm start imports nothing
OPERATOR_NAMESPACE = "kubetune-system"
KUBERAY_NAMESPACE = "kuberay-system"
DATASETS_CLAIM, CHECKPOINTS_CLAIM = "kubetune-datasets", "kubetune-checkpoints"
DAEMONS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kube-proxy",
)


class ClusterError(RuntimeError):
    """The local cluster could not be started."""


def _say(text: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _build(script: str) -> Path:
    """Run one of the hack/*/build.sh scripts (cached) and return the folder it prints."""
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / script)], capture_output=True, text=True, check=False, timeout=3600
    )
    if proc.returncode != 0:
        raise ClusterError(f"{script} failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


class LocalCluster:
    """The cluster whose state lives in `state`; `up()` starts it, `down()` removes it."""

    def __init__(self, state: Path = DEFAULT_STATE) -> None:
        self.state = state.resolve()
        self.pki = self.state / "pki"
        self.logs = self.state / "logs"
        self.run_dir = self.state / "run"
        self.kubeconfig = self.state / "kubeconfig"
        self.bin = self.state / "bin"
        self.socket = self.state / "containerd" / "containerd.sock"
        self.timings: dict[str, float] = {}
        images = self.state / "images.json"
        # The images of the running cluster (written by up()), so a reusing session knows them.
        self.images: dict[str, str] = json.loads(images.read_text()) if images.exists() else {}

    # -- public ---------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin / "kubectl"), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    def is_up(self) -> bool:
        return (self.pki / "ca.crt").exists() and http_ok(
            f"https://{GATEWAY}:{API_PORT}/readyz", self.pki / "ca.crt", self._admin_token()
        )

    def up(self) -> None:
        started = time.monotonic()
        down_everything(self.state)
        for d in (self.pki, self.logs, self.run_dir, self.bin):
            d.mkdir(parents=True, exist_ok=True)
        self._step("build binaries", self._binaries)
        self._step("write certificates and configuration", self._configure)
        self._step("network", self._network_up)
        self._step("control plane", self._control_plane)
        self._step("containerd", self._containerd)
        self._step("images", self._images)
        self._step("node", self._node)
        self._step("system add-ons", self._addons)
        self._step("kubetune chart", self._chart)
        self._step("all pods Ready", self._wait_pods_ready)
        self.timings["total"] = time.monotonic() - started
        (self.state / "timings.json").write_text(json.dumps(self.timings, indent=1))
        _say(
            "ready in {:.0f} s ({})".format(
                self.timings["total"],
                ", ".join(f"{k} {v:.0f} s" for k, v in self.timings.items() if k != "total"),
            )
        )

    def down(self) -> None:
        down_everything(self.state)

    # -- steps ----------------------------------------------------------------------------------

    def _step(self, name: str, fn: Callable[[], None]) -> None:
        started = time.monotonic()
        _say(f"{name} ...")
        fn()
        self.timings[name] = time.monotonic() - started

    def _binaries(self) -> None:
        controlplane = ensure_binaries()
        self.kuberay_dir = _build("hack/kuberay/build.sh")
        self.coredns_dir = _build("hack/coredns/build.sh")
        self.pause_dir = _build("hack/pause/build.sh")
        # containerd is Debian's (on PATH); everything else is from the control-plane build.
        for name in (*(d for d in DAEMONS if d != "containerd"), "kubectl", "helm"):
            (self.bin / name).unlink(missing_ok=True)
            (self.bin / name).symlink_to(controlplane / name)

    def _configure(self) -> None:
        self._write_pki()
        token = secrets.token_hex(16)
        (self.pki / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
        self._write_kubeconfig(self.kubeconfig, token=token)
        for user, cn, org in (
            ("kubelet", f"system:node:{NODE_NAME}", "system:nodes"),
            ("kube-scheduler", "system:kube-scheduler", None),
            ("kube-controller-manager", "system:kube-controller-manager", None),
            ("kube-proxy", "system:kube-proxy", None),
        ):
            self._client_cert(user, cn, org)
            self._write_kubeconfig(self.state / f"{user}.kubeconfig", cert=user)
        (self.state / "resolv.conf").write_text("# no upstream: nothing resolves outside\n")
        self._write_containerd_config()
        self._write_cni_config()
        self._write_kubelet_config()
        self._write_kube_proxy_config()

    def _network_up(self) -> None:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{GATEWAY}/{POD_CIDR.prefixlen}", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for key, value in (
            ("net/ipv4/ip_forward", "1"),
            ("net/bridge/bridge-nf-call-iptables", "1"),
            ("net/bridge/bridge-nf-call-ip6tables", "1"),
        ):
            path = Path("/proc/sys") / key
            if path.exists():
                path.write_text(value)

    def _control_plane(self) -> None:
        p = self.pki
        etcd = f"http://127.0.0.1:{ETCD_PORT}"
        self._spawn(
            "etcd",
            [
                f"--data-dir={self.state / 'etcd'}",
                f"--listen-client-urls={etcd}",
                f"--advertise-client-urls={etcd}",
                f"--listen-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
                f"--initial-cluster=default=http://127.0.0.1:{ETCD_PEER_PORT}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait("etcd", lambda: http_ok(f"{etcd}/health"))
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd}",
                f"--bind-address={GATEWAY}",
                f"--advertise-address={GATEWAY}",
                f"--secure-port={API_PORT}",
                f"--cert-dir={self.state / 'apiserver-certs'}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                f"--token-auth-file={p / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--kubelet-client-certificate={p / 'apiserver-kubelet.crt'}",
                f"--kubelet-client-key={p / 'apiserver-kubelet.key'}",
                "--kubelet-preferred-address-types=InternalIP",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
            ],
        )
        self._wait("kube-apiserver", self.is_up)
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.state / 'kube-controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={self.state / 'kube-controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={self.state / 'kube-controller-manager.kubeconfig'}",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                f"--cluster-signing-cert-file={p / 'ca.crt'}",
                f"--cluster-signing-key-file={p / 'ca.key'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=10257",
                f"--cert-dir={self.state / 'kcm-certs'}",
                "--profiling=false",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={self.state / 'kube-scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={self.state / 'kube-scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={self.state / 'kube-scheduler.kubeconfig'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=10259",
                f"--cert-dir={self.state / 'scheduler-certs'}",
                "--profiling=false",
            ],
        )
        self._wait("kube-controller-manager", lambda: http_ok("https://127.0.0.1:10257/healthz"))
        self._wait("kube-scheduler", lambda: http_ok("https://127.0.0.1:10259/healthz"))

    def _containerd(self) -> None:
        self._spawn(
            "containerd", ["--config", str(self.state / "containerd.toml")], binary="containerd"
        )
        self._wait(
            "containerd",
            lambda: (
                self.socket.exists()
                and subprocess.run(
                    ["ctr", "--address", str(self.socket), "version"],
                    capture_output=True,
                    check=False,
                ).returncode
                == 0
            ),
        )
        remove_all_containers(self.socket)

    def _images(self) -> None:
        builder = ImageBuilder(self.socket)
        base = builder.base_image()
        self.images = {
            "pause": builder.scratch_image("pause", "pause.Dockerfile", self.pause_dir),
            "coredns": builder.scratch_image("coredns", "coredns.Dockerfile", self.coredns_dir),
            "kuberay": builder.scratch_image(
                "kuberay-operator", "kuberay-operator.Dockerfile", self.kuberay_dir
            ),
            "operator": builder.operator_image(base),
            "trainer": builder.trainer_image(base),
        }
        (self.state / "images.json").write_text(json.dumps(self.images, indent=1))
        for tag, seconds in builder.times.seconds.items():
            _say(f"image {tag}: {seconds:.0f} s{' (built)' if tag in builder.times.built else ''}")
        # containerd's sandbox image is in its config: point it at the pause image just made.
        config = self.state / "containerd.toml"
        config.write_text(config.read_text().replace("@PAUSE_IMAGE@", self.images["pause"]))
        self._stop("containerd")
        self._containerd()

    def _node(self) -> None:
        self._spawn(
            "kubelet",
            [
                f"--config={self.state / 'kubelet.yaml'}",
                f"--kubeconfig={self.state / 'kubelet.kubeconfig'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={GATEWAY}",
                f"--root-dir={self.state / 'kubelet'}",
                f"--cert-dir={self.state / 'kubelet-certs'}",
                f"--node-labels=node.kubernetes.io/instance-type={NODE_INSTANCE_TYPE}",
            ],
        )
        self._spawn("kube-proxy", [f"--config={self.state / 'kube-proxy.yaml'}"])
        self._wait(
            "kubelet",
            lambda: (
                self.kubectl(
                    "get",
                    "node",
                    NODE_NAME,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                    check=False,
                ).stdout
                == "True"
            ),
            timeout=180,
        )

    def _addons(self) -> None:
        crds = sorted((self.kuberay_dir / "crds").glob("*.yaml"))
        self.kubectl("apply", "--server-side", *[a for c in crds for a in ("-f", str(c))])
        self.kubectl("apply", "--server-side", "-f", str(self.kuberay_dir / "rbac" / "role.yaml"))
        values = {
            "COREDNS_IMAGE": self.images["coredns"],
            "DNS_IP": DNS_IP,
            "SERVICE_CIDR": SERVICE_CIDR,
            "POD_CIDR": str(POD_CIDR),
            "KUBERAY_IMAGE": self.images["kuberay"],
        }
        for manifest in ("coredns.yaml", "kuberay-operator.yaml"):
            self.kubectl(
                "apply",
                "--server-side",
                "-f",
                "-",
                input=_fill((MANIFESTS / manifest).read_text(), values),
            )
        self.kubectl("apply", "--server-side", "-f", "-", input=self._storage_yaml())

    def _chart(self) -> None:
        operator_repo, operator_tag = self.images["operator"].rsplit(":", 1)
        proc = subprocess.run(
            [
                str(self.bin / "helm"),
                "upgrade",
                "--install",
                "kubetune",
                str(CHART),
                "--namespace",
                OPERATOR_NAMESPACE,
                "--create-namespace",
                "--wait",
                "--timeout=240s",
                "--set",
                f"image.repository={operator_repo}",
                "--set",
                f"image.tag={operator_tag}",
                "--set",
                "image.pullPolicy=Never",
                "--set",
                f"trainerImage={self.images['trainer']}",
            ],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            raise ClusterError(f"helm install of {CHART} failed:\n{proc.stderr}")

    def _wait_pods_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pods = json.loads(self.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
            waiting = [
                f"{p['metadata']['namespace']}/{p['metadata']['name']}"
                for p in pods
                if not _pod_ready(p)
            ]
            if pods and not waiting:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"pods not Ready after {timeout:.0f} s: {waiting}\n"
                    + self.kubectl("get", "pods", "-A", "-o", "wide").stdout
                )
            time.sleep(1)

    # -- processes ------------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], binary: str | None = None) -> None:
        exe = shutil.which(binary) if binary else str(self.bin / name)
        if exe is None:
            raise ClusterError(f"{binary} is not installed (apt-get install {binary})")
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [exe, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.run_dir / f"{name}.pid").write_text(str(proc.pid))

    def _stop(self, name: str) -> None:
        _stop_pid_file(self.run_dir / f"{name}.pid")

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        pid = int((self.run_dir / f"{name}.pid").read_text())
        while not ready():
            if not _alive(pid):
                raise ClusterError(
                    f"{name} exited; last lines of its log:\n" + _tail(self.logs / f"{name}.log")
                )
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{name} not ready after {timeout:.0f} s; log:\n"
                    + _tail(self.logs / f"{name}.log")
                )
            time.sleep(0.3)

    # -- files ----------------------------------------------------------------------------------

    def _admin_token(self) -> str | None:
        tokens = self.pki / "tokens.csv"
        return tokens.read_text().split(",")[0] if tokens.exists() else None

    def _write_pki(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubetune-local-ca")])
        ca = (
            cert_builder(ca_name, ca_name, ca_key, now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self._ca = (ca, ca_key)
        (self.pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (self.pki / "ca.key").write_bytes(key_pem(ca_key))
        sans: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address(a)) for a in (GATEWAY, API_SERVICE_IP, "127.0.0.1")
        ]
        sans += [
            x509.DNSName(n)
            for n in (
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            )
        ]
        self._issue("apiserver", "kube-apiserver", None, ExtendedKeyUsageOID.SERVER_AUTH, sans)
        self._client_cert("apiserver-kubelet", "kube-apiserver-kubelet-client", "system:masters")
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.pki / "sa.key").write_bytes(key_pem(sa_key))
        (self.pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def _client_cert(self, name: str, cn: str, org: str | None) -> None:
        self._issue(name, cn, org, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def _issue(
        self,
        name: str,
        cn: str,
        org: str | None,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
    ) -> None:
        ca, ca_key = self._ca
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        key = ec.generate_private_key(ec.SECP256R1())
        builder = cert_builder(
            x509.Name(attrs), ca.subject, key, datetime.datetime.now(datetime.UTC)
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        (self.pki / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (self.pki / f"{name}.key").write_bytes(key_pem(key))

    def _write_kubeconfig(
        self, path: Path, token: str | None = None, cert: str | None = None
    ) -> None:
        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        if token:
            user: dict[str, Any] = {"token": token}
        else:
            user = {
                "client-certificate": str(self.pki / f"{cert}.crt"),
                "client-key": str(self.pki / f"{cert}.key"),
            }
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "kubetune-local",
                            "cluster": {
                                "server": f"https://{GATEWAY}:{API_PORT}",
                                "certificate-authority-data": ca,
                            },
                        }
                    ],
                    "users": [{"name": "user", "user": user}],
                    "contexts": [
                        {
                            "name": "kubetune-local",
                            "context": {"cluster": "kubetune-local", "user": "user"},
                        }
                    ],
                    "current-context": "kubetune-local",
                },
                indent=1,
            )
        )
        path.chmod(0o600)

    def _write_containerd_config(self) -> None:
        c = self.state / "containerd"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        mirrors = "".join(
            f'[{cri}.registry.mirrors."{host}"]\n  endpoint = ["http://127.0.0.1:{CLOSED_PORT}"]\n'
            for host in ("docker.io", "*")
        )
        (self.state / "containerd.toml").write_text(f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{c / "state"}"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{c / "containerd.sock.ttrpc"}"
[{cri}]
  sandbox_image = "@PAUSE_IMAGE@"
  # A negative oom_score_adj needs CAP_SYS_RESOURCE, which this machine does not grant.
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{self.state / "cni"}"
{mirrors}""")

    def _write_cni_config(self) -> None:
        (self.state / "cni").mkdir(exist_ok=True)
        (self.state / "cni" / "10-kubetune.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": CNI_NETWORK,
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "dataDir": str(self.state / "cni-ipam"),
                                "ranges": [[{"subnet": str(POD_CIDR), "gateway": GATEWAY}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                            },
                        }
                    ],
                },
                indent=1,
            )
        )

    def _write_kubelet_config(self) -> None:
        (self.state / "kubelet.yaml").write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "address": GATEWAY,
                    "port": 10250,
                    "readOnlyPort": 0,
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(self.pki / "ca.crt")},
                    },
                    "authorization": {"mode": "Webhook"},
                    "cgroupDriver": "cgroupfs",
                    "failSwapOn": False,
                    "failCgroupV1": False,
                    "containerRuntimeEndpoint": f"unix://{self.socket}",
                    "clusterDNS": [DNS_IP],
                    "clusterDomain": "cluster.local",
                    "resolvConf": str(self.state / "resolv.conf"),
                    # Never garbage-collect the imported images: they cannot be pulled back.
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "evictionHard": {
                        "memory.available": "100Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                    },
                    "serializeImagePulls": False,
                    "rotateCertificates": False,
                    "kernelMemcgNotification": False,
                    "protectKernelDefaults": False,
                    "maxPods": 110,
                },
                indent=1,
            )
        )

    def _write_kube_proxy_config(self) -> None:
        (self.state / "kube-proxy.yaml").write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(self.state / "kube-proxy.kubeconfig")},
                    "hostnameOverride": NODE_NAME,
                    "mode": "iptables",
                    "clusterCIDR": str(POD_CIDR),
                    "bindAddress": GATEWAY,
                    "healthzBindAddress": "127.0.0.1:10256",
                    "metricsBindAddress": "127.0.0.1:10249",
                    "nodePortAddresses": [f"{GATEWAY}/32"],
                    # Replies of a pod reached through a Service on the same bridge must come back
                    # through the host to be un-NATed; masquerading all service traffic ensures it.
                    "iptables": {"masqueradeAll": True},
                    # No CAP_SYS_RESOURCE-like tuning of the host's conntrack table.
                    "conntrack": {"maxPerCore": 0},
                },
                indent=1,
            )
        )

    def _storage_yaml(self) -> str:
        """Local PersistentVolumes: the shared datasets (read-only) and a checkpoint folder."""
        checkpoints = self.state / "volumes" / "checkpoints"
        checkpoints.mkdir(parents=True, exist_ok=True)
        checkpoints.chmod(0o777)  # the trainer runs as uid 1000
        docs = []
        for claim, path, mode in (
            (DATASETS_CLAIM, DATASETS, "ReadOnlyMany"),
            (CHECKPOINTS_CLAIM, checkpoints, "ReadWriteOnce"),
        ):
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": claim},
                    "spec": {
                        "capacity": {"storage": "10Gi"},
                        "accessModes": [mode],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "storageClassName": "kubetune-local",
                        "local": {"path": str(path)},
                        "claimRef": {"namespace": "default", "name": claim},
                        "nodeAffinity": {
                            "required": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {
                                                "key": "kubernetes.io/hostname",
                                                "operator": "In",
                                                "values": [NODE_NAME],
                                            }
                                        ]
                                    }
                                ]
                            }
                        },
                    },
                }
            )
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim, "namespace": "default"},
                    "spec": {
                        "accessModes": [mode],
                        "storageClassName": "kubetune-local",
                        "volumeName": claim,
                        "resources": {"requests": {"storage": "10Gi"}},
                    },
                }
            )
        return "\n---\n".join(json.dumps(d) for d in docs)


# -- teardown (module level: it must work from any checkout, with or without state) -----------


def down_everything(state: Path) -> None:
    """Stop the daemons and remove what they left: containers, mounts, namespaces, bridge,
    CNI state and iptables chains. Safe to run when nothing is up."""
    run_dir = state / "run"
    socket = state / "containerd" / "containerd.sock"
    for name in ("kube-proxy", "kubelet"):
        _stop_pid_file(run_dir / f"{name}.pid")
    if socket.exists() and (run_dir / "containerd.pid").exists():
        with contextlib.suppress(Exception):
            remove_all_containers(socket)
    for name in (
        "containerd",
        "kube-scheduler",
        "kube-controller-manager",
        "kube-apiserver",
        "etcd",
    ):
        _stop_pid_file(run_dir / f"{name}.pid")
    _kill_shims(socket)
    _unmount_under(state)
    _unmount_under(CONTAINERD_ROOT)
    for netns in Path("/var/run/netns").glob("cni-*"):
        subprocess.run(["ip", "netns", "delete", netns.name], capture_output=True, check=False)
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
    _delete_iptables_chains()
    _remove_cgroups("kubepods")
    for leftover in ("etcd", "cni-ipam", "kubelet", "containerd"):
        shutil.rmtree(state / leftover, ignore_errors=True)


def leftovers(state: Path) -> list[str]:
    """What a cluster left on the machine; empty after a clean `down_everything`."""
    found: list[str] = []
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) in (os.getpid(), os.getppid()):
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(state) in cmdline or str(CONTAINERD_ROOT) in cmdline:
            found.append(f"process {proc.name}: {cmdline[:120]}")
    prefixes = (str(state.resolve()), str(CONTAINERD_ROOT))
    found += [
        f"mount {line.split()[1]}"
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1].startswith(prefixes)
    ]
    netns = Path("/var/run/netns")
    found += [f"network namespace {n.name}" for n in netns.glob("cni-*")] if netns.exists() else []
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        found.append(f"bridge {BRIDGE}")
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool):
            saved = subprocess.run([tool], capture_output=True, text=True, check=False).stdout
            found += [
                f"{tool}: {line}"
                for line in saved.splitlines()
                if any(p in line for p in IPTABLES_PREFIXES)
            ]
    found += [
        f"cgroup {c}/kubepods"
        for c in Path("/sys/fs/cgroup").iterdir()
        if (c / "kubepods").is_dir()
    ]
    return found


def remove_all_containers(socket: Path) -> None:
    """Kill and delete every task and container of containerd's k8s.io namespace."""
    ctr = ["ctr", "--address", str(socket), "-n", "k8s.io"]
    ids = subprocess.run(
        [*ctr, "containers", "ls", "-q"], capture_output=True, text=True, check=False, timeout=60
    ).stdout.split()
    for cid in ids:
        subprocess.run(
            [*ctr, "tasks", "kill", "-s", "SIGKILL", cid],
            capture_output=True,
            check=False,
            timeout=30,
        )
    for cid in ids:
        for _ in range(20):
            done = subprocess.run(
                [*ctr, "tasks", "delete", "-f", cid],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            if done.returncode == 0 or "not found" in done.stderr:
                break
            time.sleep(0.2)
        subprocess.run(
            [*ctr, "containers", "delete", cid], capture_output=True, check=False, timeout=30
        )


def _stop_pid_file(pid_file: Path, grace: float = 15) -> None:
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(0.05)
    pid_file.unlink()


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(") ")[-1].startswith("Z"))


def _kill_shims(socket: Path) -> None:
    """containerd's shims live in their own sessions: find them by our socket's address."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            cmdline
            and cmdline[0].endswith(b"containerd-shim-runc-v2")
            and str(socket).encode() in cmdline
        ):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def _unmount_under(root: Path) -> None:
    prefix = str(root.resolve())
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    mounts = [m.encode().decode("unicode_escape") for m in mounts]
    for mount in sorted(
        (m for m in mounts if m == prefix or m.startswith(prefix + "/")), key=len, reverse=True
    ):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)


def _delete_iptables_chains() -> None:
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            saved = subprocess.run(
                [f"{tool}-save", "-t", table], capture_output=True, text=True, check=False
            ).stdout
            chains = [
                line[1:].split()[0]
                for line in saved.splitlines()
                if line.startswith(":") and line[1:].startswith(IPTABLES_PREFIXES)
            ]
            for line in saved.splitlines():  # rules in built-in chains that jump to ours
                parts = shlex.split(line)  # comments are quoted and contain spaces
                if (
                    parts[:1] == ["-A"]
                    and parts[1] not in chains
                    and any(p.startswith(IPTABLES_PREFIXES) for p in parts[2:])
                ):
                    subprocess.run(
                        [tool, "-t", table, "-D", *parts[1:]], capture_output=True, check=False
                    )
            for op in ("-F", "-X"):
                for chain in chains:
                    subprocess.run([tool, "-t", table, op, chain], capture_output=True, check=False)


def _remove_cgroups(name: str) -> None:
    for controller in Path("/sys/fs/cgroup").iterdir():
        top = controller / name
        if not top.is_dir():
            continue
        for directory in sorted(
            (d for d in top.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("${" + key + "}", value)
    if "${" in text:
        raise ClusterError(f"unfilled placeholder in manifest: {text[text.index('${') :][:40]}")
    return text


def _pod_ready(pod: dict[str, Any]) -> bool:
    if pod.get("status", {}).get("phase") == "Succeeded":
        return True
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def _tail(path: Path, lines: int = 30) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.cluster")
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE)
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.state)
    if args.command == "up":
        try:
            cluster.up()
        except BaseException:
            _say("start failed; logs are in " + str(cluster.logs))
            raise
        print(cluster.kubectl("get", "nodes,pods", "-A", "-o", "wide").stdout)
        print(f"export KUBECONFIG={cluster.kubeconfig} PATH={cluster.bin}:$PATH")
    elif args.command == "down":
        cluster.down()
        left = leftovers(cluster.state)
        if left:
            _say("down left behind:\n  " + "\n  ".join(left))
            return 1
        _say(
            "down: no daemons, mounts, network namespaces, bridge, iptables chains or cgroups left"
        )
    else:
        print("up" if cluster.is_up() else "down")
        return 0 if cluster.is_up() else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
