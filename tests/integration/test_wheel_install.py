"""The service as a plain wheel: `healthscore migrate` from any directory, no repository."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import asyncpg

from healthscore.store.migrate import load_migrations, migrations_path
from tests.utils.compiled import (
    COMPILED_SOURCES,
    HAS_C_COMPILER,
    HAS_PYTHON_HEADERS,
    REPOSITORY,
)


def build_wheel(out: Path) -> Path:
    temp = out / "tmp"  # the build's temporary directory, to see what it leaves there
    temp.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(REPOSITORY)],
        env=os.environ | {"TMPDIR": str(temp)},
        check=True,
        timeout=300,
    )  # fmt: skip
    assert not list(temp.glob("healthscore-*")), "hatch_build.py left its temporary copy"
    (wheel,) = out.glob("healthscore-*.whl")
    return wheel


def test_a_required_compile_that_fails_says_why(tmp_path: Path) -> None:
    """HEALTHSCORE_REQUIRE_COMPILED=1 (the image's build stage): a failed compile fails
    the build, and its output says why (the compiler's last lines)."""
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\necho 'Python.h: the compiler of this test refuses' >&2\nexit 1\n")
    cc.chmod(0o755)
    temp = tmp_path / "tmp"
    temp.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(REPOSITORY)],
        env=os.environ | {"CC": str(cc), "HEALTHSCORE_REQUIRE_COMPILED": "1", "TMPDIR": str(temp)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert "the compiler of this test refuses" in done.stdout + done.stderr
    assert not list(temp.glob("healthscore-*")), "hatch_build.py left its temporary copy"


def install_and_migrate(tmp_path: Path, empty_database: str) -> None:
    """Build the wheel, install it as files, run `healthscore migrate` elsewhere."""
    wheel = build_wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.rsplit("/", 1)[1] for n in names if n.endswith(".sql"))
    assert shipped == sorted(m.file_name for m in load_migrations(migrations_path()))
    assert not [n for n in names if n.startswith("healthscore_lab/")], "the lab is not the service"
    compiled = sorted(n for n in names if n.endswith(".so"))
    if HAS_C_COMPILER and HAS_PYTHON_HEADERS:  # hatch_build.py compiles
        assert [n.split(".")[0] for n in compiled] == sorted(
            [m.removesuffix(".py") for m in COMPILED_SOURCES]
            + ["healthscore/core/_compiled__mypyc"]
        )
        assert "healthscore/core/compiled.json" in names

    # installed as files (not a link to this tree) and imported ahead of the editable install
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True,
        timeout=300,
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "MIGRATION_"))}
    env |= {"PYTHONPATH": str(target), "DATABASE_URL": empty_database}
    where = subprocess.run(
        [sys.executable, "-c", "import healthscore; print(healthscore.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(target))
    if compiled:  # the installed wheel runs its compiled core, and passes its own check
        probe = "from healthscore.compiled import core_is_compiled; print(core_is_compiled())"
        runs = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert runs.stdout.strip() == "True"
    done = subprocess.run(
        [sys.executable, "-m", "healthscore.cli", "migrate"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


async def test_migrate_runs_from_a_plain_wheel_install(tmp_path: Path, empty_database: str) -> None:
    await asyncio.to_thread(install_and_migrate, tmp_path, empty_database)
    conn = await asyncpg.connect(empty_database)
    try:
        applied = await conn.fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        await conn.close()
    assert applied == len(load_migrations(migrations_path()))
