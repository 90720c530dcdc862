"""Loaders: formats, row numbers, bad rows reported (never silent)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubetune_trainer.data.loaders import infer_format, load_rows, parse_hf_uri, resolve_local

pytestmark = pytest.mark.unit


def test_jsonl_malformed_line_is_reported_with_its_line_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n{"a": \n\n[1, 2]\n{"a": 4}\n')
    loaded = load_rows(str(path))
    assert [n for n, _ in loaded.rows] == [1, 5]
    assert loaded.problems[0][0] == 2 and "malformed JSON" in loaded.problems[0][1]
    assert loaded.problems[1] == (4, "not a JSON object (list)")
    assert loaded.rows_read == 4


def test_jsonl_keeps_line_separators_inside_strings(tmp_path):
    """U+2028/U+2029 (and \\x85, \\x1c) are legal raw inside JSON strings; a splitlines()
    reader cut such a row in two and reported two malformed rows instead of one good row."""
    path = tmp_path / "d.jsonl"
    rows = [{"question": "a\u2028b\u2029c", "answer": "d\x85e\x1cf"}, {"question": "g"}]
    path.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n")
    loaded = load_rows(str(path))
    assert loaded.problems == []
    assert loaded.rows == [(1, rows[0]), (2, rows[1])]


def test_json_array_csv_and_parquet(tmp_path, datasets_dir):
    mathqa = load_rows(str(datasets_dir / "mathqa" / "challenge_test.json"))
    assert len(mathqa.rows) == 604 and mathqa.rows[0][0] == 1
    viggo = load_rows(str(datasets_dir / "viggo" / "viggo-valid.csv"))
    assert len(viggo.rows) == 714 and set(viggo.rows[0][1]) == {"mr", "ref"}
    pq.write_table(
        pa.table({"question": ["q1", "q2"], "answer": ["a", "b"]}), tmp_path / "d.parquet"
    )
    assert load_rows(str(tmp_path / "d.parquet")).rows[1] == (2, {"question": "q2", "answer": "b"})


def test_relative_paths_use_the_base_dir(tmp_path):
    (tmp_path / "x.jsonl").write_text(json.dumps({"a": 1}) + "\n")
    assert len(load_rows("x.jsonl", base_dir=tmp_path).rows) == 1
    assert resolve_local("file:///data/x.jsonl") == "/data/x.jsonl"


def test_s3_and_gs_uris_go_through_pyarrow_filesystems(tmp_path, monkeypatch):
    from pyarrow import fs

    (tmp_path / "r.jsonl").write_text('{"a": 1}\n')
    seen = []

    def fake_from_uri(uri):
        seen.append(uri)
        return fs.LocalFileSystem(), str(tmp_path / "r.jsonl")

    from kubetune_trainer.data import loaders

    monkeypatch.setattr(loaders, "remote_filesystem", fake_from_uri)
    assert load_rows("s3://bucket/data/r.jsonl").rows == [(1, {"a": 1})]
    assert load_rows("gs://bucket/r.jsonl").rows == [(1, {"a": 1})]
    assert seen == ["s3://bucket/data/r.jsonl", "gs://bucket/r.jsonl"]


def test_infer_format_and_hf_uri():
    assert infer_format("s3://b/train.JSONL") == "jsonl"
    assert infer_format("x.data", "csv") == "csv"
    with pytest.raises(ValueError, match="format"):
        infer_format("x.data")
    assert parse_hf_uri("hf://gsm8k?config=main&split=test") == ("gsm8k", "main", "test")
