"""Whether the scoring core runs compiled, and a guard against a stale compiled module.

The wheel build compiles the core's hot modules with mypyc (`hatch_build.py`) and
records each compiled source's digest in `core/compiled.json`. Python imports a
compiled module ahead of its source, so after an edit to a source of an editable
install the old code would run, silently: importing `healthscore` refuses that.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

PACKAGE = Path(__file__).parent
MANIFEST = PACKAGE / "core" / "compiled.json"


def compiled_modules() -> dict[str, str]:
    """{source path under the package's parent: its digest when compiled}; {} if none."""
    try:
        recorded: dict[str, str] = json.loads(MANIFEST.read_bytes())
    except FileNotFoundError:
        return {}
    return recorded


def core_is_compiled() -> bool:
    """Whether the scoring function runs as a compiled extension module."""
    from healthscore.core.scoring import score

    return not score.__file__.endswith(".py")


def core_build() -> str:
    """`compiled` or `pure_python`, for the start-up log line and the build info metric."""
    return "compiled" if core_is_compiled() else "pure_python"


def check_compiled_sources() -> None:
    """Raise ImportError if a compiled module's source changed since it was compiled."""
    for module, digest in compiled_modules().items():
        source = PACKAGE.parent / module
        if source.exists() and hashlib.sha256(source.read_bytes()).hexdigest() != digest:
            raise ImportError(
                f"{module} changed since it was compiled, and its compiled module would run "
                "the old code: install again (`pip install -e .`), or set "
                "HEALTHSCORE_PURE_PYTHON=1 and install again for a pure-Python core"
            )
