"""The curriculum hand-off downloads the previous stage's best once per node, whatever the
number of workers asking at once, and never reuses a half-written copy."""

import multiprocessing
import time
from pathlib import Path

import pytest

from kubetune_trainer.storage import COMPLETE, download_once_per_node

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
