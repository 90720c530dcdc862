"""The stage's durable progress in storage, on a local folder and on a real S3-compatible
server: a folder counts only once committed, only the latest resume point stays, and a
finished stage is recorded for later attempts."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune_trainer import durable, storage

pytestmark = pytest.mark.trainer


@pytest.fixture(params=["local", "s3"])
def stage_uri(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "job-uid" / "sft")
    return storage.join(request.getfixturevalue("s3_storage"), "job-uid", "sft")


def save_point(stage_uri: str, step: int, tmp_path: Path, commit: bool = True) -> str:
    """What ranks of a collective save do: each adds its own files, then one commits."""
    uri = durable.resume_point_uri(stage_uri, step, 1, step)
    for rank in (0, 1):
        shard = tmp_path / f"shard-{step}-{rank}"
        (shard / "pytorch_model").mkdir(parents=True)
        (shard / "pytorch_model" / f"rank{rank}_optim_states.pt").write_text(f"{step}/{rank}")
        storage.upload_into(shard, uri)
    if commit:
        durable.commit(uri, {"step": step})
    return uri


def test_only_committed_points_count_and_only_the_latest_stays(stage_uri, tmp_path):
    assert durable.latest_resume_point(stage_uri) is None
    first = save_point(stage_uri, 4, tmp_path)
    cut_short = save_point(stage_uri, 9, tmp_path, commit=False)  # e.g. a grace period ran out
    assert durable.latest_resume_point(stage_uri) == first
    # Both ranks' shards are in the one folder.
    local = storage.download_dir(first, tmp_path / "down")
    assert sorted(p.name for p in (local / "pytorch_model").iterdir()) == [
        "rank0_optim_states.pt",
        "rank1_optim_states.pt",
    ]
    second = save_point(stage_uri, 12, tmp_path)
    assert durable.latest_resume_point(stage_uri) == second
    assert set(durable.prune_resume_points(stage_uri, keep=second)) == {first, cut_short}
    assert durable.resume_points(stage_uri) == [second]


def test_a_finished_stage_is_recorded_and_its_resume_state_dropped(stage_uri, tmp_path):
    assert durable.finished_stage(stage_uri) is None
    save_point(stage_uri, 3, tmp_path)
    durable.finish_stage(stage_uri, {"epoch": 2, "step": 6})
    assert durable.finished_stage(stage_uri) == {"epoch": 2, "step": 6}
    assert durable.resume_points(stage_uri) == []


def test_one_data_position_has_one_name():
    """An epoch's end and a preemption before the next step are the same point."""
    end = durable.resume_point_uri("s3://b/j/sft", 42, 3, 0)
    assert end == durable.resume_point_uri("s3://b/j/sft", 42, 3, 0)
    assert end != durable.resume_point_uri("s3://b/j/sft", 43, 3, 2)
    names = [durable.resume_point_uri("x", s, 1, s) for s in (9, 10, 100)]
    assert names == sorted(names)  # the newest sorts last


def test_remote_storage_reads_the_sdk_endpoint_variable(s3_storage):
    """pyarrow ignores AWS_ENDPOINT_URL; kubetune honours it (MinIO, Ceph, the tests)."""
    uri = storage.join(s3_storage, "probe.txt")
    storage.write_text(uri, "hello")
    assert storage.read_text(uri) == "hello"
    assert storage.list_folders(s3_storage) == []
