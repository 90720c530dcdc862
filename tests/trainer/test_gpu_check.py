"""bench/gpu_check.py, the GPU-only script, runs end to end on CPU with the tiny shape, so
the script a GPU session runs has run before (its numbers only mean something on a GPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_on_cpu_writes_every_section(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_check.py"),
            *("--out", str(tmp_path), "--size", "tiny", "--device", "cpu"),
            *("--batch", "2", "--context", "128", "--example", "32", "--steps", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'trainer_image'}"},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    step = json.loads((tmp_path / "step.json").read_text())
    assert step["parameters"] == 852_608 and step["tokens_per_s"] > 0
    packed = json.loads((tmp_path / "packed.json").read_text())
    assert packed["block_mask_eager"]["tokens_per_s"] > 0
    memory = json.loads((tmp_path / "memory.json").read_text())
    assert memory["plan_estimate_gib"] > 0
