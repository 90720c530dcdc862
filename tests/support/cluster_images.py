"""The local cluster's images, built here without a registry and imported into containerd.

No image can be pulled on this machine, so every image is built from what can be fetched:
static Go binaries (pause, CoreDNS, the KubeRay operator) go into `FROM scratch` images, and
the Python images (operator, trainer) are built from the project's own Dockerfiles on a base
made from Debian packages with mmdebstrap. buildah builds; the result is pushed to a
docker-archive and imported into the cluster's containerd. Every image is tagged with a hash of
what it is made from, so a warm machine reuses it and a change rebuilds only what it touches.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(
    os.environ.get("KUBETUNE_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubetune"
)
IMAGES_DIR = REPO_ROOT / "hack" / "cluster" / "images"
REGISTRY = "kubetune.local"
# The base of the Python images: Debian bookworm's own Python 3.11 (the version the project
# targets), venv, headers and a C++ toolchain (DeepSpeed JIT-compiles its CPU ops), libaio.
BASE_PACKAGES = (
    "passwd",
    "ca-certificates",
    "python3",
    "python3-venv",
    "python3-dev",
    "python-is-python3",
    "build-essential",
    "ninja-build",
    "libaio-dev",
    "libaio1",
)
MMDEBSTRAP = (
    "mmdebstrap",
    "--variant=minbase",
    "--include=" + ",".join(BASE_PACKAGES),
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-include=/usr/share/locale/locale.alias",
    "bookworm",
)
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# The CPU trainer: torch from PyPI, no DeepSpeed op pre-built (they need nvcc), and the HF
# libraries offline, since nothing on this machine may reach a model hub.
CPU_TRAINER_ARGS = {
    "TORCH_INDEX_URL": "",
    "DS_BUILD_CPU_ADAM": "0",
    "DS_BUILD_FUSED_ADAM": "0",
    "DS_BUILD_UTILS": "0",
    "HF_HUB_OFFLINE": "1",
}
BUILD_CA = "/run/kubetune-build-ca.crt"


class ImageBuildError(RuntimeError):
    """An image could not be built or imported."""


@dataclass
class ImageTimes:
    """Seconds spent per image, and which ones were (re)built, for the log."""

    seconds: dict[str, float] = field(default_factory=dict)
    built: list[str] = field(default_factory=list)


def content_key(paths: Iterable[Path], *extra: str) -> str:
    """A short hash of the files under `paths` (names and bytes) and of `extra` strings.

    Inside the repository only files git would commit count (tracked, or untracked and not
    ignored), so a fresh clone of the same commit computes the same key as a developer's tree
    with build leftovers (egg-info, caches)."""
    digest = hashlib.sha256()
    for text in extra:
        digest.update(text.encode() + b"\0")
    for root in sorted(paths):
        for path in _files(root):
            digest.update(str(path).encode() + b"\0")
            digest.update((REPO_ROOT / path if not path.is_absolute() else path).read_bytes())
    return digest.hexdigest()[:12]


def _files(root: Path) -> list[Path]:
    if not root.is_relative_to(REPO_ROOT):
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z", "--", str(root)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(Path(p) for p in listed.split("\0") if p and (REPO_ROOT / p).is_file())


def _run(args: list[str], what: str, timeout: float = 3600) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}): {' '.join(args)}\n{tail}")
    return proc.stdout


def buildah_has(tag: str) -> bool:
    proc = subprocess.run(
        ["buildah", "inspect", "--type", "image", tag], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0


class ImageBuilder:
    """Builds the images with buildah and imports them into one containerd (by its socket)."""

    def __init__(self, containerd_socket: Path, log=sys.stderr) -> None:
        self.socket = containerd_socket
        self.log = log
        self.times = ImageTimes()

    def _ctr(self, *args: str, timeout: float = 1800) -> str:
        return _run(
            ["ctr", "--address", str(self.socket), "-n", "k8s.io", *args], f"ctr {args[0]}", timeout
        )

    def in_containerd(self) -> set[str]:
        return set(self._ctr("images", "ls", "-q").split())

    def _say(self, text: str) -> None:
        print(text, file=self.log, flush=True)

    def _import(self, tag: str) -> None:
        with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="kubetune-image-") as tmp:
            archive = Path(tmp) / "image.tar"
            _run(
                ["buildah", "push", "--quiet", tag, f"docker-archive:{archive}:{tag}"],
                f"buildah push {tag}",
            )
            self._ctr("images", "import", str(archive))

    def ensure(self, tag: str, build: Callable[[str], object]) -> str:
        """Import `tag` into containerd unless it is there, building it first unless buildah
        has it; older tags of the same image leave containerd, so its store does not grow
        with every change (their layers are mostly shared with the new one)."""
        started = time.monotonic()
        present = self.in_containerd()
        if tag not in present:
            if not buildah_has(tag):
                self._say(f"building image {tag}")
                build(tag)
                self.times.built.append(tag)
            self._say(f"importing image {tag} into containerd")
            self._import(tag)
        repository = tag.rsplit(":", 1)[0]
        stale = [t for t in present if t.rsplit(":", 1)[0] == repository and t != tag]
        if stale:
            self._ctr("images", "rm", *stale)
        self.times.seconds[tag] = time.monotonic() - started
        return tag

    # -- the images ---------------------------------------------------------------------------

    def scratch_image(self, name: str, dockerfile: str, context: Path) -> str:
        key = content_key([IMAGES_DIR / dockerfile], str(context))
        return self.ensure(
            f"{REGISTRY}/{name}:{key}",
            lambda tag: _run(
                [
                    "buildah",
                    "bud",
                    "--quiet",
                    "--layers",
                    "-f",
                    str(IMAGES_DIR / dockerfile),
                    "-t",
                    tag,
                    str(context),
                ],
                f"buildah bud {tag}",
            ),
        )

    def base_image(self) -> str:
        tag = f"{REGISTRY}/debian-python:bookworm-{content_key([], *MMDEBSTRAP)}"
        if buildah_has(tag):
            return tag
        started = time.monotonic()
        self._say(f"building base image {tag} with mmdebstrap (Debian packages)")
        with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="kubetune-base-") as tmp:
            rootfs = Path(tmp) / "rootfs.tar"
            _run([*MMDEBSTRAP, str(rootfs), DEBIAN_MIRROR], "mmdebstrap")
            container = _run(["buildah", "from", "scratch"], "buildah from").strip()
            try:
                _run(["buildah", "add", "--quiet", container, str(rootfs), "/"], "buildah add")
                _run(
                    [
                        "buildah",
                        "config",
                        "--env",
                        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "--cmd",
                        "/bin/bash",
                        container,
                    ],
                    "buildah config",
                )
                _run(["buildah", "commit", "--quiet", container, tag], "buildah commit")
            finally:
                subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
        self.times.seconds[tag] = time.monotonic() - started
        self.times.built.append(tag)
        return tag

    def project_image(
        self, name: str, dockerfile: Path, sources: list[Path], build_args: dict[str, str]
    ) -> str:
        """An image of the project's own Dockerfile, keyed by the files it copies."""
        args = [f"{k}={v}" for k, v in sorted(build_args.items())]
        key = content_key([dockerfile, *sources], *args)
        command = ["buildah", "bud", "--layers", "--network", "host", "-f", str(dockerfile)]
        # This machine reaches PyPI through a TLS-inspecting proxy whose CA pip is told about
        # (PIP_CERT): the build sees the same bundle, mounted for the build only.
        ca_bundle = os.environ.get("PIP_CERT")
        if ca_bundle and Path(ca_bundle).is_file():
            command += [
                "--volume",
                f"{ca_bundle}:{BUILD_CA}:ro",
                "--build-arg",
                f"PIP_CERT={BUILD_CA}",
            ]
        for arg in args:
            command += ["--build-arg", arg]

        def build(tag: str) -> None:
            _run([*command, "-t", tag, str(REPO_ROOT)], f"buildah bud {tag}", timeout=5400)

        return self.ensure(f"{REGISTRY}/{name}:{key}", build)

    def operator_image(self, base: str) -> str:
        return self.project_image(
            "operator",
            REPO_ROOT / "Dockerfile",
            [
                REPO_ROOT / p
                for p in (
                    "pyproject.toml",
                    "README.md",
                    "operator",
                    "trainer_image/kubetune_trainer",
                    ".dockerignore",
                )
            ],
            {"PYTHON_IMAGE": base},
        )

    def trainer_image(self, base: str) -> str:
        return self.project_image(
            "trainer",
            REPO_ROOT / "trainer_image" / "Dockerfile",
            [
                REPO_ROOT / p
                for p in (
                    "pyproject.toml",
                    "README.md",
                    "operator",
                    "trainer_image",
                    ".dockerignore",
                )
            ],
            {"BUILD_IMAGE": base, "RUNTIME_IMAGE": base, **CPU_TRAINER_ARGS},
        )
