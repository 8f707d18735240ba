"""What the build hook compiles (hatch_build.py, pyproject.toml's `compile` list) and
whether this machine has what compiling needs; without it the install is pure Python."""

from __future__ import annotations

import shutil
import sysconfig
import tomllib
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
_HOOK = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["tool"]["hatch"]["build"][
    "targets"
]["wheel"]["hooks"]["custom"]
# the compiled modules' sources, as paths under services/
COMPILED_SOURCES: list[str] = list(_HOOK["compile"])
HAS_C_COMPILER = shutil.which("cc") is not None or shutil.which("gcc") is not None
HAS_PYTHON_HEADERS = (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()
