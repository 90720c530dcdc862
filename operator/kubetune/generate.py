"""`make manifests`: write every generated file from the models (CRD, chart copy, API docs).

Tests compare these files with a fresh render, so a model change without regeneration fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kubetune.api_reference import render_api_reference
from kubetune.crd import render_crds, render_report_crd

CRD_NAME = "kubetune.dev_finetunejobs.yaml"
REPORT_CRD_NAME = "kubetune.dev_finetunejobreports.yaml"


def generated_files(root: Path) -> dict[Path, str]:
    crd, report_crd = render_crds(), render_report_crd()
    return {
        root / "crds" / CRD_NAME: crd,
        root / "charts" / "kubetune" / "crds" / CRD_NAME: crd,
        root / "crds" / REPORT_CRD_NAME: report_crd,
        root / "charts" / "kubetune" / "crds" / REPORT_CRD_NAME: report_crd,
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
