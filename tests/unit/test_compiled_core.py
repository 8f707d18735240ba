"""The scoring core compiled with mypyc (hatch_build.py) computes what its source does.

The compiled modules are the ones pyproject.toml lists; where the build could compile
(a C compiler on the PATH), the installed core must be the compiled one, and the same
stream through the compiled and the pure-Python core must give byte-identical effects:
states, interactions, milestones, every score, alerts.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import msgspec
import pytest

from healthscore.compiled import check_compiled_sources, compiled_modules, core_is_compiled
from healthscore.core.effects import compute_batch_effects
from healthscore.core.interactions import InteractionRecord
from healthscore.core.scoring.model import V2_MODEL_PATH, default_model, load_model
from healthscore.core.scoring.state import OrganizationState
from healthscore.service.ingest.decode import Decoded, Decoder
from tests.bench.decode_cpu import SUPPORT, USAGE, stream
from tests.utils.compiled import (
    COMPILED_SOURCES,
    HAS_C_COMPILER,
    HAS_PYTHON_HEADERS,
    REPOSITORY,
)

SOURCES = REPOSITORY / "services"


def effects_digest(events: int = 12_000, organizations: int = 300, seed: int = 11) -> str:
    """sha256 of every effect of the simulator's stream through compute_batch_effects,
    under v4 with silence rescoring and under v2 (which alerts at once)."""
    decoder = Decoder(USAGE, SUPPORT, 64 * 1024)
    decoded = [decoder.decode(record) for record in stream(events, organizations, seed)]
    applied = [item.event for item in decoded if isinstance(item, Decoded)]
    digest = hashlib.sha256()
    for model, step in ((default_model(), 6 * 3600.0), (load_model(V2_MODEL_PATH), None)):
        states: dict[str, OrganizationState] = {}
        interactions: dict[str, InteractionRecord] = {}
        for start in range(0, len(applied), 1_000):
            batch = applied[start : start + 1_000]
            effects = compute_batch_effects(
                batch, states, interactions, model, step, keep_scores=True
            )
            states.update(effects.states)
            interactions.update(effects.interactions)
            digest.update(
                msgspec.json.encode(
                    [
                        sorted(effects.states.items()),
                        sorted(effects.interactions.items()),
                        effects.milestones,
                        [
                            (r.organization_id, r.health, r.previous_score, r.scored_at, r.cause)
                            for r in effects.scores
                        ],
                        [
                            (a.organization_id, a.decision, a.health, a.scored_at, a.caused_by)
                            for a in effects.alerts
                        ],
                        effects.applied,
                    ]
                )
            )
    return digest.hexdigest()


def test_no_compiled_module_defines_a_msgspec_struct() -> None:
    """mypyc rewrites the annotations of a compiled module's classes (`float | None`
    becomes `type`), and msgspec decodes and describes structs from them."""
    for module in COMPILED_SOURCES:
        tree = ast.parse((SOURCES / module).read_text())
        structs = [
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef)
            and any("Struct" in ast.unparse(base) for base in node.bases)
        ]
        assert not structs, f"{module} defines {structs}: move them to a module not compiled"


@pytest.mark.skipif(
    os.environ.get("HEALTHSCORE_PURE_PYTHON") == "1", reason="installed pure Python by request"
)
@pytest.mark.skipif(
    not HAS_C_COMPILER, reason="no C compiler: the build installs the pure-Python core"
)
@pytest.mark.skipif(
    not HAS_PYTHON_HEADERS,
    reason="no Python headers (Debian: python3-dev): the build installs the pure-Python core",
)
def test_the_installed_core_is_compiled_where_it_can_be() -> None:
    assert sorted(compiled_modules()) == sorted(COMPILED_SOURCES), (
        "the install did not compile the core; pip shows the build hook's warning saying "
        "why only with -v: pip install -v --no-deps -e ."
    )
    assert core_is_compiled()


@pytest.mark.skipif(not core_is_compiled(), reason="the core here is pure Python")
def test_the_compiled_core_computes_what_its_source_does(tmp_path: Path) -> None:
    pure = tmp_path / "pure"
    shutil.copytree(
        SOURCES / "healthscore",
        pure / "healthscore",
        ignore=shutil.ignore_patterns("*.so", "compiled.json", "__pycache__"),
    )
    script = (
        "from healthscore.compiled import core_is_compiled\n"
        "from tests.unit.test_compiled_core import effects_digest\n"
        "print(core_is_compiled(), effects_digest())"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPOSITORY,
        env=os.environ | {"PYTHONPATH": os.pathsep.join([str(pure), str(SOURCES / "lab"), "."])},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert done.stdout.split() == ["False", effects_digest()]


def test_a_compiled_module_older_than_its_source_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "healthscore"
    (package / "core").mkdir(parents=True)
    (package / "core" / "effects.py").write_text("X = 1\n")
    digest = hashlib.sha256(b"X = 1\n").hexdigest()
    manifest = {"healthscore/core/effects.py": digest}
    (package / "core" / "compiled.json").write_text(json.dumps(manifest))
    monkeypatch.setattr("healthscore.compiled.PACKAGE", package)
    monkeypatch.setattr("healthscore.compiled.MANIFEST", package / "core" / "compiled.json")
    check_compiled_sources()  # unchanged: accepted
    (package / "core" / "effects.py").write_text("X = 2\n")
    with pytest.raises(ImportError, match=r"healthscore/core/effects.py changed since"):
        check_compiled_sources()


def test_an_install_removes_the_extensions_of_every_python_version(tmp_path: Path) -> None:
    """One manifest guards one build's extensions: another interpreter's, left beside
    the sources, would run their old code past check_compiled_sources."""
    from hatch_build import remove_compiled

    core = tmp_path / "healthscore" / "core"
    core.mkdir(parents=True)
    (core / "bands.py").write_text("X = 1\n")
    built = [
        core / f"bands{sysconfig.get_config_var('EXT_SUFFIX')}",
        core / "bands.cpython-399-x86_64-linux-gnu.so",
        core / "_compiled__mypyc.cpython-399-x86_64-linux-gnu.so",
        core / "compiled.json",
    ]
    for path in built:
        path.write_text("")
    remove_compiled(tmp_path)
    assert sorted(p.name for p in core.iterdir()) == ["bands.py"]
