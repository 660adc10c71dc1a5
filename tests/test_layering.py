"""The library never imports the app: every ``deepgen`` module loads without ``gradio`` or ``spaces``."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import deepgen

REPO = Path(__file__).resolve().parents[1]
APP_PACKAGES = ("gradio", "spaces", "studio")


@pytest.mark.slow
def test_no_deepgen_module_imports_the_app():
    modules = sorted(info.name for info in pkgutil.walk_packages(deepgen.__path__, "deepgen.")
                     if info.name != "deepgen.__main__")  # runs the command line
    assert "deepgen.pipeline" in modules and "deepgen.contestants" in modules and "deepgen.training" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(p for p in {APP_PACKAGES!r} if p in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", "a deepgen module imported the app or gradio"


def test_deepgen_finds_no_file_through_the_repository():
    """Package data is found through the package; nothing climbs out of it (``parents[1]``, ``..``)."""
    offenders = [str(path.relative_to(REPO)) for path in (REPO / "deepgen").rglob("*.py")
                 if "parents[" in path.read_text(encoding="utf-8") or "parent.parent" in path.read_text("utf-8")]
    assert offenders == []
