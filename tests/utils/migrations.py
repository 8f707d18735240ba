"""A database as an earlier release left it: the migrations before a version applied."""

from __future__ import annotations

import shutil
from pathlib import Path

from healthscore.store.migrate import apply_migrations, load_migrations, migrations_path


def migrations_before(version: str, directory: Path) -> Path:
    """`directory` holding copies of the shipped migrations older than `version`."""
    directory.mkdir()
    for migration in load_migrations(migrations_path()):
        if migration.version < version:
            shutil.copy(migrations_path() / migration.file_name, directory / migration.file_name)
    return directory


async def migrate_before(database_url: str, version: str, directory: Path) -> None:
    """Apply the shipped migrations older than `version` (copied into `directory`)."""
    await apply_migrations(database_url, migrations_before(version, directory))
