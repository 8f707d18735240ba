"""`healthscore episodes-left-open`: after a replay into a new database, the episodes
the old one published that the new one does not continue.

Two real databases, as the switch of docs/operations.md ("Replaying", step 4) has them:
the old one with published alerts, the new one with the replay's alerts (unpublished).
The command runs as the service's role (DATABASE_ROLE), as an operator runs it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from tests.conftest import DatabaseFactory


async def _alerts(url: str, alerts: list[tuple[uuid.UUID, str, uuid.UUID, str, bool]]) -> None:
    """(organization, kind, episode id, level, published) in the order decided."""
    conn = await asyncpg.connect(url)
    try:
        at = datetime(2026, 11, 1, tzinfo=UTC)
        for n, (org, kind, episode_id, level, published) in enumerate(alerts):
            await conn.execute(
                "INSERT INTO organizations (id) VALUES ($1) ON CONFLICT DO NOTHING", org
            )
            alert_id = episode_id if kind == "risk_raised" else uuid.uuid4()
            payload: dict[str, Any] = {
                "alert_id": str(alert_id),
                "organization_id": str(org),
                "kind": kind,
                "episode_id": str(episode_id),
                "risk_level": level,
                "scored_at": (at + timedelta(days=n)).isoformat(),
            }
            await conn.execute(
                "INSERT INTO alert_outbox (alert_id, organization_id, kind, episode, payload,"
                " published_at) VALUES ($1, $2, $3, 1, $4::jsonb,"
                " CASE WHEN $5 THEN now() END)",
                alert_id,
                org,
                kind,
                orjson.dumps(payload).decode(),
                published,
            )
    finally:
        await conn.close()


async def test_the_episodes_a_rebuilt_database_leaves_open_are_listed(
    database_factory: DatabaseFactory, migrated_template: str
) -> None:
    old_url = await database_factory(template=migrated_template)
    new_url = await database_factory(template=migrated_template)
    recovered, elsewhere, same, closed_before, unsent = (uuid.uuid4() for _ in range(5))
    e = {name: uuid.uuid4() for name in ("r", "x", "y", "s", "c", "u", "u2")}
    await _alerts(
        old_url,
        [
            (recovered, "risk_raised", e["r"], "medium", True),
            (elsewhere, "risk_raised", e["x"], "high", True),
            (same, "risk_raised", e["s"], "medium", True),
            (same, "risk_escalated", e["s"], "high", True),
            (closed_before, "risk_raised", e["c"], "medium", True),
            (closed_before, "recovered", e["c"], "low", True),
            # decided but never sent: the notification service holds nothing of it
            (unsent, "risk_raised", e["u"], "medium", False),
        ],
    )
    await _alerts(
        new_url,
        [
            (recovered, "risk_raised", e["r"], "medium", False),
            (recovered, "recovered", e["r"], "low", False),
            (elsewhere, "risk_raised", e["y"], "critical", False),
            (same, "risk_raised", e["s"], "high", False),
            (unsent, "risk_raised", e["u2"], "medium", False),
        ],
    )
    env = dict(os.environ)
    env.pop("MIGRATION_DATABASE_URL", None)
    env.update({"DATABASE_URL": new_url, "DATABASE_ROLE": "healthscore_writer"})
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "healthscore.cli",
            "episodes-left-open",
            "--old-database-url",
            old_url,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert sorted((r[0], r[1], r[2], r[4]) for r in rows) == sorted(
        [
            (str(recovered), str(e["r"]), "medium", "not at risk"),
            (str(elsewhere), str(e["x"]), "high", f"in episode {e['y']} (critical)"),
        ]
    ), done.stdout
    assert "2 of 3 open episode(s) left open: 1 not at risk in the new database, 1 in " in (
        done.stderr
    ), done.stderr
