"""`make manifests`: write every generated file from the models (CRD, chart copy, API docs).

Tests compare these files with a fresh render, so a model change without regeneration fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kubetune.api_reference import render_api_reference
from kubetune.crd import render_crds

CRD_NAME = "kubetune.dev_finetunejobs.yaml"


def generated_files(root: Path) -> dict[Path, str]:
    crd = render_crds()
    return {
        root / "crds" / CRD_NAME: crd,
        root / "charts" / "kubetune" / "crds" / CRD_NAME: crd,
        root / "docs" / "api-reference.md": render_api_reference(),
    }


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    for path, text in generated_files(root).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
