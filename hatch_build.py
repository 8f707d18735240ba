"""Hatch build hook: compile the scoring core's hot modules with mypyc.

The modules listed under `compile` in pyproject.toml
([tool.hatch.build.targets.wheel.hooks.custom]) become C extensions: beside their
sources for an editable install (`pip install -e .`), in a temporary copy shipped in
the wheel otherwise. `healthscore/core/compiled.json` records each compiled source's
digest, and importing `healthscore` refuses a compiled module whose source changed
since (`healthscore.compiled`). Without a C compiler the wheel is pure Python with a
warning (the same results, a slower core); HEALTHSCORE_REQUIRE_COMPILED=1 makes that
an error (the container image), HEALTHSCORE_PURE_PYTHON=1 skips compiling.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCES = "services"
PACKAGE = "healthscore"
MANIFEST = "healthscore/core/compiled.json"
GROUP = "healthscore.core._compiled"  # the shared library of the compiled modules

# `--config-file=`: the repository's mypy settings (strict, the pydantic plugin) are for
# checking; compiling needs only the types, and the build environment has no pydantic.
# `--cache-dir`: mypy's cache goes with the rest of the work, not into services/.
_SETUP = f"""
import sys
from mypyc.build import mypycify
from setuptools import setup

work, *paths = sys.argv[1:]
setup(
    name="healthscore-compiled-core",
    ext_modules=mypycify(
        ["--config-file=", "--cache-dir=" + work + "/mypy", *paths],
        opt_level="3", group_name="{GROUP}", target_dir=work + "/c",
    ),
    script_args=["build_ext", "--inplace", "--build-temp", work + "/temp",
                 "--build-lib", work + "/lib", "--parallel", "2"],
)
"""


class CompiledCore(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"
    _copy: Path | None = None  # a standard build's copy of the package

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        modules = [str(module) for module in self.config.get("compile", [])]
        sources = Path(self.root, SOURCES)
        if version == "editable":
            remove_compiled(sources)  # nothing from an earlier build outlives this one
        if not modules or os.environ.get("HEALTHSCORE_PURE_PYTHON") == "1":
            return
        if version == "editable":
            tree = sources
        else:  # a copy, removed by finalize() once the wheel holds its extensions
            tree = self._copy = Path(tempfile.mkdtemp(prefix="healthscore-compile-"))
            shutil.copytree(
                sources / PACKAGE,
                tree / PACKAGE,
                ignore=shutil.ignore_patterns("*.so", "__pycache__", "compiled.json"),
            )
        try:
            compiled = compile_modules(tree, modules)
        except (OSError, subprocess.CalledProcessError) as error:
            remove_compiled(tree)
            output = getattr(error, "stdout", None) or str(error)
            tail = "\n".join(str(output).strip().splitlines()[-5:])
            if os.environ.get("HEALTHSCORE_REQUIRE_COMPILED") == "1":
                self.finalize(version, build_data, "")
                raise RuntimeError(
                    "healthscore: the scoring core was not compiled with mypyc and "
                    f"HEALTHSCORE_REQUIRE_COMPILED=1:\n{tail}"
                ) from None
            self.app.display_warning(
                "healthscore: the scoring core was not compiled with mypyc (a C compiler "
                f"and Python's headers are needed); installing it as pure Python:\n{tail}"
            )
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            for path in compiled:
                build_data["force_include"][str(path)] = str(path.relative_to(tree))

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None


def compile_modules(tree: Path, modules: list[str]) -> list[Path]:
    """Compile `modules` (paths under `tree`) in place; the extensions and manifest."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    with tempfile.TemporaryDirectory(prefix="healthscore-mypyc-") as work:
        subprocess.run(
            [sys.executable, "-c", _SETUP, work, *modules],
            cwd=tree,
            check=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    manifest = tree / MANIFEST
    manifest.write_text(
        json.dumps(
            {m: hashlib.sha256((tree / m).read_bytes()).hexdigest() for m in modules},
            indent=1,
            sort_keys=True,
        )
    )
    extensions = [tree / (module.removesuffix(".py") + suffix) for module in modules]
    group = tree / (GROUP.replace(".", "/") + "__mypyc" + suffix)
    missing = [str(path) for path in [*extensions, group] if not path.exists()]
    if missing:
        raise OSError(f"mypyc did not produce {', '.join(missing)}")
    return [*extensions, group, manifest]


def remove_compiled(tree: Path) -> None:
    """Remove every compiled module (of any Python version) and the manifest under
    `tree`'s package: one manifest guards the extensions of one build, and another
    interpreter's extensions left beside it would escape the guard."""
    for path in (tree / PACKAGE).rglob("*.so"):
        path.unlink()
    (tree / MANIFEST).unlink(missing_ok=True)
