"""Shared fixtures for the trainer tests: the real datasets and a tiny model built offline."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASETS = REPO_ROOT.parent / "shared" / "datasets"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "kubetune" / "torch_extensions")
)


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not DATASETS.exists():
        pytest.fail(f"real datasets missing at {DATASETS}")
    return DATASETS


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    rows = []
    with path.open() as handle:
        for line in handle:
            rows.append(json.loads(line))
            if limit and len(rows) >= limit:
                break
    return rows


@pytest.fixture(scope="session")
def gsm8k_rows(datasets_dir: Path) -> list[dict]:
    return read_jsonl(datasets_dir / "gsm8k" / "train.jsonl", limit=400)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, gsm8k_rows: list[dict]) -> Path:
    """The builtin tiny Llama with a tokenizer trained on real GSM8k text and the task tokens."""
    from kubetune_trainer.model import build_builtin_model

    texts = [row["question"] + "\n" + row["answer"] for row in gsm8k_rows]
    return build_builtin_model(texts, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from kubetune.api.tasks import QA_TOKENS
    from kubetune_trainer.model import add_special_tokens, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    add_special_tokens(tokenizer, QA_TOKENS)
    return tokenizer


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3-compatible server on loopback (moto in server mode), one per session."""
    from tests.support.s3_server import running_s3_server

    with running_s3_server(tmp_path_factory.mktemp("s3") / "server.log") as server:
        yield server


@pytest.fixture
def s3_storage(s3_server, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh bucket, and this process's environment pointed at the server."""
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    bucket = "t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    return s3_server.create_bucket(bucket)
