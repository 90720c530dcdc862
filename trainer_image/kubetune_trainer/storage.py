"""Checkpoint storage: local or mounted paths, and s3:// / gs:// through pyarrow filesystems.

`storageURI` is the durable home of the consolidated checkpoints. Locally it is a folder; on
Kubernetes an object store (credentials come from the pod environment, never from the spec).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from kubetune.api.pods import SCRATCH_ENV
from kubetune_trainer.data.loaders import REMOTE_SCHEMES, remote_filesystem, resolve_local


def scratch_root() -> Path:
    """Where checkpoints, downloads and the hand-off are staged: the worker pod's node-local
    scratch volume (KUBETUNE_SCRATCH_DIR, sized by the plan), else the system temp folder."""
    root = Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    return root


def staging_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A folder on the scratch volume, removed when the `with` block ends."""
    return tempfile.TemporaryDirectory(prefix=prefix, dir=scratch_root())


def is_remote(uri: str) -> bool:
    return uri.startswith(REMOTE_SCHEMES)


def is_storage_uri(uri: str) -> bool:
    """A URI that only this module can resolve (from_pretrained would take it for a hub id)."""
    return uri.startswith((*REMOTE_SCHEMES, "pvc://", "file://"))


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def upload_dir(local: Path, uri: str) -> None:
    """Copy a folder to `uri` (replacing what was there)."""
    if is_remote(uri):
        delete_dir(uri)
        upload_into(local, uri)
        return
    target = Path(resolve_local(uri))
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(local, target)


def write_text(uri: str, text: str) -> None:
    """Write (replace) one small file at `uri`: written whole, then renamed into place locally;
    an object store makes a single PUT visible whole by itself."""
    if is_remote(uri):
        filesystem, path = remote_filesystem(uri)
        with filesystem.open_output_stream(path) as stream:
            stream.write(text.encode())
        return
    target = Path(resolve_local(uri))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(text)
    partial.replace(target)


def upload_into(local: Path, uri: str) -> None:
    """Copy a folder's files into `uri`, keeping what is there: every rank of a collective
    save adds its own shard to the same folder."""
    if is_remote(uri):
        from pyarrow import fs

        filesystem, path = remote_filesystem(uri)
        fs.copy_files(str(local), path, destination_filesystem=filesystem)
        return
    shutil.copytree(local, resolve_local(uri), dirs_exist_ok=True)


def read_text(uri: str) -> str | None:
    """A small file's text, or None when there is none."""
    if is_remote(uri):
        filesystem, path = remote_filesystem(uri)
        try:
            with filesystem.open_input_stream(path) as stream:
                return bytes(stream.read()).decode()
        except FileNotFoundError:
            return None
    target = Path(resolve_local(uri))
    return target.read_text() if target.is_file() else None


def list_folders(uri: str) -> list[str]:
    """Names of the folders directly inside `uri` (none when it does not exist)."""
    if is_remote(uri):
        from pyarrow import fs

        filesystem, path = remote_filesystem(uri)
        selector = fs.FileSelector(path, allow_not_found=True)
        return sorted(
            Path(info.path).name
            for info in filesystem.get_file_info(selector)
            if info.type == fs.FileType.Directory
        )
    folder = Path(resolve_local(uri))
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def download_dir(uri: str, local: Path) -> Path:
    """A local folder with the contents of `uri` (the folder itself when it is local)."""
    if not is_remote(uri):
        return Path(resolve_local(uri))
    from pyarrow import fs

    filesystem, path = remote_filesystem(uri)
    local.mkdir(parents=True, exist_ok=True)
    fs.copy_files(path, str(local), source_filesystem=filesystem)
    return local


NODE_CACHE_ENV = "KUBETUNE_NODE_CACHE"
COMPLETE = ".kubetune-complete"


def download_once_per_node(
    uri: str, root: Path | None = None, fetch: Callable[[str, Path], Path] = download_dir
) -> Path:
    """A remote folder fetched once per node (pod) and shared by the workers on it: the first
    to take the lock downloads, the others wait and reuse the copy; a marker written last
    makes a half-written copy (a worker killed mid-download) count as absent. A local
    folder is read where it is."""
    if not is_remote(uri):
        return fetch(uri, Path())
    import fcntl
    import hashlib

    root = root or Path(os.environ.get(NODE_CACHE_ENV) or scratch_root() / "kubetune-node-cache")
    root.mkdir(parents=True, exist_ok=True)
    target = root / hashlib.sha256(uri.encode()).hexdigest()[:20]
    with open(root / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / COMPLETE).exists():
            shutil.rmtree(target, ignore_errors=True)
            fetch(uri, target)
            (target / COMPLETE).touch()
    return target


def delete_dir(uri: str) -> None:
    if is_remote(uri):
        filesystem, path = remote_filesystem(uri)
        with contextlib.suppress(FileNotFoundError):
            filesystem.delete_dir(path)
        return
    shutil.rmtree(resolve_local(uri), ignore_errors=True)


def absolute(uri: str, base_dir: Path | None) -> str:
    """Local storage paths made absolute (Ray workers do not share the caller's cwd)."""
    if is_remote(uri) or uri.startswith("pvc://"):
        return uri
    return str(Path(resolve_local(uri, base_dir)).resolve())
