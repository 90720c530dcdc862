"""The curriculum hand-off downloads the previous stage's best once per node, whatever the
number of workers asking at once, and never reuses a half-written copy."""

import multiprocessing
import time
from pathlib import Path

import pytest

from kubetune.api.pods import SCRATCH_ENV
from kubetune_trainer.storage import (
    COMPLETE,
    NODE_CACHE_ENV,
    download_once_per_node,
    scratch_root,
    staging_dir,
)

pytestmark = pytest.mark.trainer

URI = "s3://bucket/run/stage-a/epoch-002"


def slow_fetch(log: str):
    def fetch(uri: str, target: Path) -> Path:
        with open(log, "a") as handle:
            handle.write(uri + "\n")
        target.mkdir(parents=True)
        time.sleep(0.3)  # long enough for the other workers to queue on the lock
        (target / "model.safetensors").write_text("weights")
        return target

    return fetch


def worker(root: str, log: str, out) -> None:
    out.put(str(download_once_per_node(URI, Path(root), slow_fetch(log))))


def test_workers_on_one_node_share_one_download(tmp_path):
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    log = tmp_path / "fetches.log"
    workers = [
        ctx.Process(target=worker, args=(str(tmp_path / "cache"), str(log), out)) for _ in range(4)
    ]
    for process in workers:
        process.start()
    paths = {out.get(timeout=30) for _ in workers}
    for process in workers:
        process.join(timeout=30)
    assert log.read_text().splitlines() == [URI]  # one download for four workers
    (path,) = paths
    assert Path(path, "model.safetensors").read_text() == "weights"


def test_a_half_written_copy_is_fetched_again(tmp_path):
    root = tmp_path / "cache"
    first = download_once_per_node(URI, root, slow_fetch(str(tmp_path / "log")))
    (first / COMPLETE).unlink()  # as if the downloading worker died before the marker
    (first / "model.safetensors").write_text("trunc")
    again = download_once_per_node(URI, root, slow_fetch(str(tmp_path / "log")))
    assert again == first and (again / "model.safetensors").read_text() == "weights"
    assert len((tmp_path / "log").read_text().splitlines()) == 2


def test_local_folders_are_read_in_place(tmp_path):
    assert download_once_per_node(str(tmp_path), tmp_path / "cache") == tmp_path
    assert not (tmp_path / "cache").exists()


def test_staging_and_the_hand_off_live_on_the_scratch_volume(tmp_path, monkeypatch):
    scratch = tmp_path / "kubetune-scratch"
    monkeypatch.setenv(SCRATCH_ENV, str(scratch))
    monkeypatch.delenv(NODE_CACHE_ENV, raising=False)
    assert scratch_root() == scratch and scratch.is_dir()
    with staging_dir("model-") as staged:
        assert Path(staged).parent == scratch
        (Path(staged) / "model.safetensors").write_text("weights")
    assert list(scratch.iterdir()) == []  # removed once uploaded
    copy = download_once_per_node(URI, fetch=slow_fetch(str(tmp_path / "log")))
    assert copy.parent == scratch / "kubetune-node-cache"


def test_worker_code_stages_only_through_the_scratch_volume():
    """Temp folders on the worker go through storage.staging_dir: a bare tempfile call in the
    training or evaluation code would stage a 26 GB checkpoint on the root filesystem."""
    import ast

    import kubetune_trainer

    package = Path(kubetune_trainer.__file__).parent
    calls = []
    for module in ("train_loop.py", "generation.py", "storage.py"):
        for node in ast.walk(ast.parse((package / module).read_text())):
            func = node.func if isinstance(node, ast.Call) else None
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id == "tempfile"
                and func.attr in ("TemporaryDirectory", "mkdtemp", "mkstemp", "gettempdir")
            ):
                calls.append(f"{module}:{func.attr}")
    # staging_dir itself, and scratch_root's fallback off Kubernetes (`kubetune run`)
    assert sorted(calls) == ["storage.py:TemporaryDirectory", "storage.py:gettempdir"]
