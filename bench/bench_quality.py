"""Does the pipeline learn? The quick start and a longer quality run on real ViGGO data.

    python bench/bench_quality.py [--only quickstart|quality] [--keep DIR]

Both run `kubetune run` exactly as a user would (a subprocess, the example manifest), on the
example's builtin:small-llama (random weights, tokenizer trained on the training text), and read the
numbers back from the run's `status.json`:

- quickstart: `examples/quickstart-local.yaml` as it is (what `make demo` runs): untrained
  model vs best checkpoint on 200 held-out test rows. Targets on a 2-core machine: the run in
  <= 3 min, function accuracy >= 0.90 and exact match >= 0.50, baseline near 0.
- quality: the same job with more epochs, scored on all 1,083 test rows (no baseline: the
  quick start measures it). Target: <= 15 min, exact match >= 0.80, function accuracy >= 0.97.

The load average is printed with the numbers: on a busy machine the wall times are upper
bounds (the scores do not depend on it: everything is seeded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart-local.yaml"
METRICS = ("function_accuracy", "attribute_accuracy", "exact_match", "stop_token_rate")
QUALITY_EPOCHS = 12
TARGETS = {
    "quickstart": {"seconds": 180, "function_accuracy": 0.90, "exact_match": 0.50},
    "quality": {"seconds": 900, "function_accuracy": 0.97, "exact_match": 0.80},
}


def quality_manifest() -> dict[str, Any]:
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["metadata"]["name"] = "quality-viggo"
    doc["spec"]["training"]["epochs"] = QUALITY_EPOCHS
    evaluation = doc["spec"]["evaluation"]
    evaluation.pop("maxSamples", None)  # all 1,083 test rows
    evaluation["baseline"] = False
    return doc


def run(name: str, doc: dict[str, Any], work: Path) -> dict[str, Any]:
    """`kubetune run` on `doc` (written next to the example so its relative paths hold)."""
    manifest = QUICKSTART.parent / f".bench-{name}.yaml"
    doc["spec"]["output"]["storageURI"] = str(work / name / "checkpoints")
    manifest.write_text(yaml.safe_dump(doc))
    started = time.monotonic()
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "kubetune.cli",
                "run",
                "-f",
                str(manifest),
                "--output",
                str(work / name),
            ],
            check=True,
        )
    finally:
        manifest.unlink()
    seconds = time.monotonic() - started
    status = json.loads((work / name / "status.json").read_text())
    return {"name": name, "seconds": seconds, "status": status}


def summary(result: dict[str, Any]) -> list[str]:
    ev = result["status"]["evaluation"]
    target = TARGETS[result["name"]]
    lines = [
        f"{result['name']}: {result['seconds']:.0f} s wall (target <= {target['seconds']} s), "
        f"{ev['samples']} test rows, best epoch {result['status']['bestCheckpoint']['epoch']}"
    ]
    baseline, gain = ev.get("baseline") or {}, ev.get("gain") or {}
    for metric in METRICS:
        line = f"  {metric:<20} trained {ev['metrics'][metric]:.3f}"
        if metric in baseline:
            line += f"  base model {baseline[metric]:.3f}  gain {gain[metric]:+.3f}"
        if metric in target:
            line += f"  (target >= {target[metric]:.2f})"
        lines.append(line)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(TARGETS))
    parser.add_argument("--keep", type=Path, help="keep the runs' outputs in this folder")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="kubetune-bench-quality-"))
    jobs = {"quickstart": yaml.safe_load(QUICKSTART.read_text()), "quality": quality_manifest()}
    lines = []
    for name, doc in jobs.items():
        if args.only in (None, name):
            lines += summary(run(name, doc, work))
    print(f"load average before/after: {os.getloadavg()[0]:.2f}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
