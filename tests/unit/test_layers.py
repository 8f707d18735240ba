"""The direction of imports between the layers, as pyproject.toml's import-linter
contracts state it: the core is pure (nothing of the store, the service, the API,
the settings, the wire models or an I/O library), the store knows no service, the
API and the consumer service are apart, and nothing of the service imports the lab.

`lint-imports` reads the imports statically. The second test imports every module
of the core in a fresh interpreter and looks at what got loaded, which also
catches what a static reading cannot (a package `__init__` that pulls in more).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import healthscore
import healthscore_lab

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"


def _contracts() -> list[dict[str, Any]]:
    contracts: list[dict[str, Any]] = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"][
        "contracts"
    ]
    return contracts


def _import_root(package: ModuleType) -> str:
    """The directory from which `package` was imported."""
    assert package.__file__ is not None  # a regular package, not a namespace one
    return str(Path(package.__file__).resolve().parents[1])


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    """This interpreter, with the packages importable from where this test imports them."""
    paths = [_import_root(p) for p in (healthscore, healthscore_lab)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_every_import_contract_is_kept() -> None:
    result = _python(
        "-c",
        "from importlinter.cli import lint_imports_command; lint_imports_command()",
        "--no-cache",
        "--no-logo",
        str(PYPROJECT),
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in report, report


def test_importing_the_core_loads_nothing_it_may_not_import() -> None:
    (core,) = [c for c in _contracts() if c.get("source_modules") == ["healthscore.core"]]
    forbidden: list[str] = core["forbidden_modules"]
    result = _python(
        "-c",
        "import importlib, pkgutil, sys\n"
        "import healthscore.core as core\n"
        "for module in pkgutil.walk_packages(core.__path__, 'healthscore.core.'):\n"
        "    importlib.import_module(module.name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n",
    )
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.split()
    assert "healthscore.core.effects" in loaded
    offending = [
        name for name in loaded if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]
    assert offending == [], f"importing the core loads {offending}"
