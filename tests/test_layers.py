"""The package's layers (DESIGN.md) hold: `lint-imports` keeps every contract of pyproject.toml's
``[tool.importlinter]`` (imports point downward only, statistics stays pure math, crops and nets stay
independent, no import cycle between siblings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: import-linter's console script, installed by the dev extra into the environment running the tests.
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_import_contracts_are_kept() -> None:
    assert LINT_IMPORTS.is_file(), f"{LINT_IMPORTS} is missing: install the dev extra (pip install -e '.[dev]')"
    done = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"lint-imports exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
