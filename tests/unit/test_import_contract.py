"""Pure modules import no kopf, kubernetes, ray or torch: checked on the source (lazy
imports inside functions count too) and by importing them in a clean interpreter."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "kopf",
    "kubernetes",
    "kubernetes_asyncio",
    "ray",
    "torch",
    "deepspeed",
    "transformers",
    "accelerate",
    "peft",
    "datasets",
}
# Globs of pure modules, relative to the repo root. New pure modules belong here.
PURE = [
    "operator/kubetune/api/*.py",
    "operator/kubetune/crd.py",
    "operator/kubetune/validation.py",
    "operator/kubetune/commands.py",
    "operator/kubetune/config.py",
    "operator/kubetune/builders/*.py",
    "operator/kubetune/status_mapping.py",
    "operator/kubetune/planning/*.py",
    "trainer_image/kubetune_trainer/evaluation/*.py",
    "trainer_image/kubetune_trainer/data/formatters.py",
    "trainer_image/kubetune_trainer/data/presets.py",
    "trainer_image/kubetune_trainer/metrics.py",
    "trainer_image/kubetune_trainer/deepspeed_config.py",
    "trainer_image/kubetune_trainer/checkpoints.py",
]


def pure_files():
    return sorted({p for pattern in PURE for p in ROOT.glob(pattern)})


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_pure_modules_exist():
    assert len(pure_files()) >= 6


@pytest.mark.parametrize("path", pure_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_source_imports_nothing_heavy(path):
    assert not imported_roots(path) & FORBIDDEN


def test_pure_modules_load_without_heavy_packages():
    modules = []
    for path in pure_files():
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[1:]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules.append(".".join(parts))
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
