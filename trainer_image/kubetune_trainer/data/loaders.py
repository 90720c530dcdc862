"""Thin loaders: rows from local files, s3:// and gs:// (pyarrow filesystems) or hf://.

Every row keeps its 1-based row number in the source (JSONL: line number; JSON array and CSV
and Parquet: record number) so a bad row is reported where a person can find it. Unparseable
rows are returned as problems next to the good rows, never skipped silently.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from kubetune.api.pods import PVC_ROOT, PVC_ROOT_ENV
from kubetune_trainer.data.jsonl import iter_jsonl

REMOTE_SCHEMES = ("s3://", "gs://")
FORMATS = ("jsonl", "json", "csv", "parquet")


@dataclass
class LoadedRows:
    """Rows of one source with their row numbers, and the rows that could not be read."""

    source: str
    rows: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)

    @property
    def rows_read(self) -> int:
        return len(self.rows) + len(self.problems)


def resolve_local(uri: str, base_dir: Path | None = None) -> str:
    """A path for local or mounted sources: file:// stripped, pvc:// mapped to its mount,
    relative paths taken from `base_dir` (the manifest's folder for `kubetune run`)."""
    if uri.startswith("file://"):
        return uri[len("file://") :]
    if uri.startswith("pvc://"):
        return str(Path(os.environ.get(PVC_ROOT_ENV, PVC_ROOT)) / uri[len("pvc://") :])
    path = Path(uri).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return str(path)


def infer_format(uri: str, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    suffix = urlparse(uri).path.rsplit(".", 1)[-1].lower()
    if suffix in ("jsonl", "ndjson"):
        return "jsonl"
    if suffix in FORMATS:
        return suffix
    raise ValueError(f"cannot infer the format of {uri!r}; set data.<split>.format")


S3_ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def remote_filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, path) for s3:// and gs:// (credentials from the environment). An
    S3-compatible store (MinIO, Ceph) is named the way the AWS CLI and SDKs take it,
    AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL: pyarrow itself reads neither."""
    from pyarrow import fs

    endpoint = next((os.environ[e] for e in S3_ENDPOINT_ENVS if os.environ.get(e)), None)
    if uri.startswith("s3://") and endpoint:
        parsed = urlparse(endpoint)
        filesystem = fs.S3FileSystem(
            endpoint_override=parsed.netloc or parsed.path,
            scheme=parsed.scheme or "https",
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        )
        return filesystem, uri[len("s3://") :]
    return fs.FileSystem.from_uri(uri)


def _read_bytes(uri: str, base_dir: Path | None) -> bytes:
    if uri.startswith(REMOTE_SCHEMES):
        filesystem, path = remote_filesystem(uri)
        with filesystem.open_input_stream(path) as stream:
            return bytes(stream.read())
    return Path(resolve_local(uri, base_dir)).read_bytes()


def _parse_jsonl(data: bytes, out: LoadedRows) -> None:
    for line in iter_jsonl(data.decode("utf-8-sig")):
        if line.error is not None:
            out.problems.append((line.number, f"malformed JSON ({line.error})"))
        else:
            _add_record(out, line.number, line.value)


def _add_record(out: LoadedRows, number: int, value: Any) -> None:
    if isinstance(value, dict):
        out.rows.append((number, value))
    else:
        out.problems.append((number, f"not a JSON object ({type(value).__name__})"))


def _parse_json(data: bytes, out: LoadedRows) -> None:
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{out.source}: malformed JSON at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(value, list):
        raise ValueError(f"{out.source}: expected a JSON array of objects")
    for number, item in enumerate(value, start=1):
        _add_record(out, number, item)


def _parse_csv(data: bytes, out: LoadedRows) -> None:
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline=""))
    for number, row in enumerate(reader, start=1):
        if None in row or any(value is None for value in row.values()):
            out.problems.append((number, "wrong number of CSV columns"))
            continue
        out.rows.append((number, dict(row)))


def _parse_parquet(data: bytes, out: LoadedRows) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    for number, row in enumerate(table.to_pylist(), start=1):
        out.rows.append((number, row))


PARSERS = {"jsonl": _parse_jsonl, "json": _parse_json, "csv": _parse_csv, "parquet": _parse_parquet}


def parse_hf_uri(uri: str) -> tuple[str, str | None, str]:
    """hf://name?config=C&split=S -> (name, config, split); split defaults to train."""
    parsed = urlparse(uri)
    query = parse_qs(parsed.query)
    name = (parsed.netloc + parsed.path).strip("/")
    return name, query.get("config", [None])[0], query.get("split", ["train"])[0]


def _load_hf(uri: str, out: LoadedRows) -> None:
    import datasets

    name, config, split = parse_hf_uri(uri)
    dataset = datasets.load_dataset(name, config, split=split)
    for number, row in enumerate(dataset, start=1):
        out.rows.append((number, dict(row)))


def load_rows(uri: str, fmt: str | None = None, base_dir: Path | None = None) -> LoadedRows:
    """All rows of one data source (see module docstring for the row numbers)."""
    out = LoadedRows(source=uri)
    if uri.startswith("hf://"):
        _load_hf(uri, out)
        return out
    PARSERS[infer_format(uri, fmt)](_read_bytes(uri, base_dir), out)
    return out
