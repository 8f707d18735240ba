"""Score quality in the running service, against real PostgreSQL and the broker: shadow
scoring and its report, promotion, profile and label imports, live alert outcomes.

State is made by the real `BatchPipeline` from Kafka-shaped records (as `serve`
applies them); the read model by the real projector. Alerts whose timing a test
needs exactly are written to the outbox as rows (the relay never runs in those
tests), and churns come through the support stream or the label import.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import unittest.mock
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from structlog.testing import capture_logs

from healthscore.core.enums import MilestoneType
from healthscore.core.quality import aggregate_settings, aggregates_differ
from healthscore.core.scoring.model import (
    DAY,
    DEFAULT_MODEL_PATH,
    ScoreModel,
    default_model,
    v1_model,
)
from healthscore.core.scoring.state import unpack_state
from healthscore.service.imports import ImportRefused, apply_profiles, import_labels, parse_labels
from healthscore.service.imports import parse_profiles as parse_profile_file
from healthscore.service.ingest.decode import Decoder, RawRecord
from healthscore.service.ingest.pipeline import BatchPipeline
from healthscore.service.ops.metrics import Metrics
from healthscore.service.outcomes import HORIZON_SECONDS, OutcomeLabeller
from healthscore.service.projector import Projector, project
from healthscore.service.promotion import Promotion, record_model
from healthscore.service.shadow import ShadowScorer, compare_shadow
from healthscore.store import promotion, quality
from healthscore.store.db import create_pool
from tests.utils.harness import (
    consume_all,
    make_producer,
    make_topics,
    produce_json,
    running_service,
    service_settings,
    wait_for,
)

USAGE, SUPPORT = "usage.quality", "support.quality"
GROUP = "quality-test"
STEP = 6 * 3600.0
REPO = Path(__file__).resolve().parents[2]
T = datetime.fromtimestamp(
    (datetime.now(UTC) - timedelta(days=200)).timestamp() // 86400 * 86400, UTC
)


def org(name: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"quality-{name}")


def eager(model: ScoreModel, version: str) -> ScoreModel:
    """`model` raising an episode at every organization's first score and never
    recovering (a candidate whose alerts differ from the live model's, visibly)."""
    alerts = msgspec.structs.replace(
        model.alerts,
        enter_probability=0.0002,
        exit_probability=0.0001,
        persist_hours=0.0,
        immediate_probability=None,
    )
    return msgspec.structs.replace(model, alerts=alerts, version=version)


def quiet(model: ScoreModel) -> ScoreModel:
    """`model` that never raises (a live model whose episodes a test writes itself)."""
    alerts = msgspec.structs.replace(
        model.alerts, enter_probability=0.9999, exit_probability=0.5, immediate_probability=None
    )
    return msgspec.structs.replace(model, alerts=alerts)


class Feed:
    """Usage and support events into the real pipeline, consecutive offsets per topic."""

    def __init__(self, pool: asyncpg.Pool[Any], producer: AIOKafkaProducer) -> None:
        self.pool = pool
        self.producer = producer
        self.offsets: dict[str, int] = {}

    def pipeline(self, model: ScoreModel) -> BatchPipeline:
        return BatchPipeline(
            pool=self.pool,
            decoder=Decoder(USAGE, SUPPORT, 64 * 1024),
            model=model,
            consumer_group=GROUP,
            rescore_step_seconds=STEP,
            silence_rescoring=False,
        )

    def _record(self, topic: str, key: uuid.UUID, body: dict[str, Any]) -> RawRecord:
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        at = datetime.fromisoformat(body["occurred_at"])
        return RawRecord(
            topic, 0, offset, str(key).encode(), orjson.dumps(body), int(at.timestamp() * 1000)
        )

    def logins(self, organization: uuid.UUID, start: datetime, days: int) -> list[RawRecord]:
        user = uuid.uuid5(organization, "user")
        return [
            self._record(
                USAGE,
                organization,
                {
                    "event_id": str(uuid.uuid5(organization, f"login-{start}-{day}")),
                    "organization_id": str(organization),
                    "user_id": str(user),
                    "type": "login",
                    "occurred_at": (start + timedelta(days=day)).isoformat(),
                },
            )
            for day in range(days)
        ]

    def churn(self, organization: uuid.UUID, at: datetime) -> list[RawRecord]:
        """A cancellation request opened and closed as churned (the support stream's
        churn signal)."""
        interaction = uuid.uuid5(organization, f"churn-{at}")
        base = {
            "organization_id": str(organization),
            "interaction_id": str(interaction),
        }
        return [
            self._record(
                SUPPORT,
                organization,
                {
                    **base,
                    "event_id": str(uuid.uuid5(interaction, "opened")),
                    "action": "opened",
                    "interaction_type": "cancellation_request",
                    "channel": "email",
                    "occurred_at": (at - timedelta(days=2)).isoformat(),
                },
            ),
            self._record(
                SUPPORT,
                organization,
                {
                    **base,
                    "event_id": str(uuid.uuid5(interaction, "closed")),
                    "action": "closed",
                    "outcome": "churned",
                    "occurred_at": at.isoformat(),
                },
            ),
        ]

    async def apply(self, records: list[RawRecord], model: ScoreModel | None = None) -> None:
        outcome = await self.pipeline(model or default_model()).process(records)
        assert outcome.applied == len(records) and not outcome.rejected


@pytest.fixture
async def feed(migrated_database: str, kafka_bootstrap: str) -> AsyncIterator[Feed]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    pool = await create_pool(migrated_database, "healthscore_writer")
    try:
        yield Feed(pool, producer)
    finally:
        await pool.close()
        await producer.stop()


@contextlib.asynccontextmanager
async def superuser(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def insert_live_raise(
    conn: asyncpg.Connection,
    organization: uuid.UUID,
    at: datetime,
    episode: int = 1,
    kind: str = "risk_raised",
) -> uuid.UUID:
    alert_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO alert_outbox (alert_id, organization_id, kind, episode, payload)"
        " VALUES ($1, $2, $3, $4, $5::jsonb)",
        alert_id,
        organization,
        kind,
        episode,
        json.dumps({"kind": kind, "scored_at": at.isoformat()}),
    )
    return alert_id


def cli(
    database_url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PYTHONPATH": f"{REPO / 'services'}:{REPO / 'services' / 'lab'}",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "healthscore.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- least privilege -------------------------------------------------------------------


async def test_writer_runs_every_quality_and_promotion_statement(feed: Feed) -> None:
    now = datetime.now(UTC)
    o, a = org("writer"), uuid.uuid4()
    await feed.apply(feed.logins(o, T, 2))
    statements: list[tuple[str, str, list[Any]]] = [
        ("SHADOW_PAGE", quality.SHADOW_PAGE, [uuid.UUID(int=0), "v9", 10]),
        (
            "UPSERT_SHADOW_HEALTH",
            quality.UPSERT_SHADOW_HEALTH,
            ["v9", [o], [50.0], [0.5], ["high"], ["{}"], [now], ["{}"], [1], [now]],
        ),
        (
            "INSERT_SHADOW_ALERTS",
            quality.INSERT_SHADOW_ALERTS,
            ["v9", [a], [o], ["risk_raised"], [1], ["score_drop"], [now], [40.0], [0.6]],
        ),
        ("SHADOW_RAISES", quality.SHADOW_RAISES, ["v9", None]),
        ("SHADOW_COUNT", quality.SHADOW_COUNT, ["v9"]),
        ("RECORD_SHADOW_MODEL", quality.RECORD_SHADOW_MODEL, ["v9", "{}"]),
        ("RECORDED_SHADOW_MODEL", quality.RECORDED_SHADOW_MODEL, ["v9"]),
        ("UPSERT_CHURN_LABELS", quality.UPSERT_CHURN_LABELS, [[o], [now], [now]]),
        ("LABEL_ALERT_OUTCOMES", quality.LABEL_ALERT_OUTCOMES, [now, HORIZON_SECONDS]),
        ("OUTCOME_FIGURES", quality.OUTCOME_FIGURES, [HORIZON_SECONDS]),
        ("SAMPLE_STATES", quality.SAMPLE_STATES, [uuid.uuid4(), 10]),
        ("SAMPLE_STATES_BEFORE", quality.SAMPLE_STATES_BEFORE, [uuid.uuid4(), 10]),
        ("ALERT_OUTCOMES", quality.ALERT_OUTCOMES, []),
        (
            "SAVE_SCORE_QUALITY_SUMMARY",
            quality.SAVE_SCORE_QUALITY_SUMMARY,
            ["v9", "{}", 1, 2, 3, 4, 4, [1.0, 2.0, 3.0]],
        ),
        ("QUEUE_OTHER_VERSION", promotion.QUEUE_OTHER_VERSION, ["v9", 10]),
        ("COUNT_OTHER_VERSION", promotion.COUNT_OTHER_VERSION, ["v9"]),
        ("RECORD_MODEL", promotion.RECORD_MODEL, ["v9", "{}"]),
        ("RECORDED_MODEL", promotion.RECORDED_MODEL, ["v9"]),
        ("SERVED_MODELS", promotion.SERVED_MODELS, []),
        ("PROMOTED_FROM", promotion.PROMOTED_FROM, ["v9"]),
    ]
    named = {name for name, _, _ in statements}
    for module in (quality, promotion):
        in_module = {n for n, v in vars(module).items() if n.isupper() and isinstance(v, str)}
        assert in_module - {"_CHURNS"} <= named, f"a new statement in {module.__name__}"
    async with feed.pool.acquire() as conn, conn.transaction():
        assert await conn.fetchval("SELECT current_user") == "healthscore_writer"
        for name, query, args in statements:
            for _ in range(2):  # the second run takes the ON CONFLICT paths
                try:
                    await conn.execute(query, *args)
                except asyncpg.PostgresError as exc:
                    raise AssertionError(f"{name} refused to the writer: {exc}") from exc
        for table in (
            "shadow_health",
            "shadow_alerts",
            "churn_labels",
            "alert_outcomes",
            "score_models",
            "shadow_models",
            "score_quality_summary",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute(f"DELETE FROM {table}")


# --- shadow scoring --------------------------------------------------------------------


async def test_a_candidate_restarted_under_its_version_with_other_settings_scores_nothing(
    feed: Feed, migrated_database: str, tmp_path: Path
) -> None:
    """A candidate's rows carry its version alone: a second candidate under the same
    version (a rerun of `adapt --version v4-ours --force`) inherited them. Organizations
    that had not changed kept the first candidate's scores and raises, and
    `shadow-report` showed them as the second's (review 32's reproduction: 3 raises
    "added" by a candidate that never raises). The version's settings are recorded at
    its first score; a candidate whose settings differ scores nothing and says why."""
    orgs = [org(f"shadow-reuse-{i}") for i in range(3)]
    for o in orgs:
        await feed.apply(feed.logins(o, T, 3), quiet(default_model()))
    first = eager(default_model(), "v2-reused")
    assert await ShadowScorer(feed.pool, first).catch_up() == 3
    second = msgspec.structs.replace(quiet(default_model()), version="v2-reused")
    with capture_logs() as logs:
        scorer = ShadowScorer(feed.pool, second)
        assert await scorer.catch_up() == 0
        await feed.apply(feed.logins(orgs[0], T + timedelta(days=3), 1), quiet(default_model()))
        assert await scorer.catch_up() == 0  # not even a changed organization
    assert scorer.refused == ["alerts"]
    assert [e["settings"] for e in logs if e["event"] == "shadow_model_version_reused"] == [
        ["alerts"]
    ]
    # the first candidate again (a replica still running it): scores on
    again = ShadowScorer(feed.pool, eager(default_model(), "v2-reused"))
    assert await again.catch_up() == 1 and again.refused == []
    # the report for the second one's file says whose rows it shows
    config = orjson.loads(DEFAULT_MODEL_PATH.read_bytes())
    config["version"] = "v2-reused"
    config["alerts"]["enter_probability"] = 0.9999
    (tmp_path / "second.json").write_bytes(orjson.dumps(config))
    report = cli(
        migrated_database,
        "shadow-report",
        env={"SHADOW_MODEL_PATH": str(tmp_path / "second.json")},
    )
    assert report.returncode == 0, report.stderr
    assert "is not the candidate these rows were scored by (settings differ: alerts)" in (
        report.stderr
    )


async def test_shadow_scorer_scores_changed_organizations_and_reports_episode_changes(
    feed: Feed, migrated_database: str, tmp_path: Path
) -> None:
    orgs = [org(f"shadow-{i}") for i in range(5)]
    live = quiet(default_model())
    for o in orgs:
        await feed.apply(feed.logins(o, T, 3), live)
    candidate = eager(default_model(), "v2-eager")
    scorer = ShadowScorer(feed.pool, candidate, page_size=2)  # three pages a walk
    assert await scorer.catch_up() == 5
    assert await scorer.catch_up() == 0  # nothing changed since
    await feed.apply(feed.logins(orgs[0], T + timedelta(days=3), 2), live)
    assert await scorer.catch_up() == 1

    async with superuser(migrated_database) as conn:
        rows = await conn.fetch(
            "SELECT organization_id, scored_at, started_at, source_version, risk_level"
            " FROM shadow_health WHERE score_model_version = 'v2-eager'"
        )
        assert {r["organization_id"] for r in rows} == set(orgs)
        versions = {
            r["organization_id"]: r["health_version"]
            for r in await conn.fetch(
                "SELECT organization_id, health_version FROM organization_state"
            )
        }
        for r in rows:
            assert r["source_version"] == versions[r["organization_id"]]
        first = next(r for r in rows if r["organization_id"] == orgs[0])
        assert first["scored_at"] == T + timedelta(days=4)  # its newest event
        assert first["started_at"] == T + timedelta(days=2)  # the candidate's first score
        raised = await conn.fetch(
            "SELECT organization_id, decided_at FROM shadow_alerts WHERE kind = 'risk_raised'"
        )
        assert sorted(r["organization_id"] for r in raised) == sorted(orgs)
        # nothing of the candidate reaches the outbox (so nothing is published)
        shadow_ids = [r["alert_id"] for r in await conn.fetch("SELECT alert_id FROM shadow_alerts")]
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM alert_outbox WHERE alert_id = ANY($1::uuid[])", shadow_ids
            )
            == 0
        )
        assert await conn.fetchval("SELECT count(*) FROM alert_outbox") == 0
        # live raises: one 3 days after the candidate's (moved), one before the candidate
        # looked (not compared), one 30 days later (dropped)
        start = T + timedelta(days=2)
        await insert_live_raise(conn, orgs[1], start + timedelta(days=3))
        await insert_live_raise(conn, orgs[2], start - timedelta(days=1))
        await insert_live_raise(conn, orgs[3], start + timedelta(days=30))
        # at the candidate's first look: its episode state was taken over, not compared
        await insert_live_raise(conn, orgs[4], start)
        report = await compare_shadow(conn, "v2-eager")
    assert report.organizations_scored == 5
    assert report.live_raises == 2 and report.candidate_raises == 5
    assert report.moved_days == [-3.0]
    assert report.dropped == 1 and report.added == 4
    changed = {uuid.UUID(k): v for k, v in report.per_organization.items()}
    assert set(changed) == set(orgs)
    assert changed[orgs[1]].moved_days == [-3.0] and not changed[orgs[1]].added
    assert len(changed[orgs[3]].added) == 1 and len(changed[orgs[3]].dropped) == 1

    # the command prints the same
    result = cli(migrated_database, "shadow-report", "--candidate", "v2-eager", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert {k: printed[k] for k in ("added", "dropped", "moved", "live_raises")} == {
        "added": 4,
        "dropped": 1,
        "moved": 1,
        "live_raises": 2,
    }
    assert printed["per_organization"][str(orgs[1])]["moved_days"] == [-3.0]
    one = cli(
        migrated_database,
        "shadow-report",
        "--candidate",
        "v2-eager",
        "--organization",
        str(orgs[3]),
    )
    assert one.returncode == 0, one.stderr
    assert "added 1, dropped 1, moved 0" in one.stdout
    # review 32: a version nothing scored printed an empty report ("the candidate
    # changes nothing"); a SHADOW_MODEL_PATH that is no model, a traceback
    unknown = cli(migrated_database, "shadow-report", "--candidate", "v2-never")
    assert unknown.returncode == 1
    assert "no shadow scores of the candidate v2-never" in unknown.stderr
    not_a_model = tmp_path / "half-written.json"
    not_a_model.write_text('{"version": "v9"')
    broken = cli(migrated_database, "shadow-report", env={"SHADOW_MODEL_PATH": str(not_a_model)})
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert broken.stderr.startswith("error: ") and "half-written.json" in broken.stderr


async def test_the_shadow_scorer_sees_a_profile_that_the_live_model_decided_on(
    feed: Feed, migrated_database: str
) -> None:
    """A profile is decided as of the newest event: the state changes where it stands.
    A candidate equal to the live model scores it again, to the live model's score."""
    o = org("shadow-profile")
    live = default_model()
    await feed.apply(feed.logins(o, T, 20), live)
    scorer = ShadowScorer(feed.pool, msgspec.structs.replace(live, version="same"))
    assert await scorer.catch_up() == 1
    long_ago = T - timedelta(days=600)
    profile = {
        "event_id": str(uuid.uuid5(o, "crm")),
        "organization_id": str(o),
        "created_at": long_ago.isoformat(),
        "milestones": {m.value: (long_ago + timedelta(days=30)).isoformat() for m in MilestoneType},
        "occurred_at": (T + timedelta(days=19, hours=5)).isoformat(),
    }
    await feed.apply([feed._record("organization.profile.v1", o, profile)], live)
    assert await scorer.catch_up() == 1
    async with superuser(migrated_database) as conn:
        state = unpack_state(
            await conn.fetchval(
                "SELECT state_msgpack FROM organization_state WHERE organization_id = $1", o
            )
        )
        shadow = await conn.fetchrow(
            "SELECT health_score, scored_at FROM shadow_health WHERE organization_id = $1", o
        )
    assert state.created_at == long_ago.timestamp() and shadow is not None
    assert shadow["scored_at"] == T + timedelta(days=19)  # the newest event
    assert float(shadow["health_score"]) == state.last_score
    assert await scorer.catch_up() == 0  # nothing changed since


# --- promotion -------------------------------------------------------------------------


async def test_a_promotion_says_which_versions_accumulated_the_aggregates_otherwise(
    feed: Feed,
) -> None:
    """The read model shows organizations under four versions besides the live one:
    one served with the live model's aggregate settings, one with other half-lives
    (both recorded by the service that served them), a shipped one never recorded
    (compared with its file) and one nobody knows. The promotion logs the second as
    `promotion_aggregates_differ` and the last as unknown, once per process."""
    live = default_model()
    slower = msgspec.structs.replace(
        live,
        version="v9-slow",
        half_life_days=msgspec.structs.replace(
            live.half_life_days, logins=live.half_life_days.logins * 2
        ),
    )
    same = msgspec.structs.replace(live, version="v9-same")
    for served in (same, slower, live):
        assert await record_model(feed.pool, served) == []
    shown = {"v9-same": "same", "v9-slow": "slow", "v1": "v1", "v9-lost": "lost"}
    for version, name in shown.items():
        o = org(f"promoted-from-{name}")
        await feed.apply(feed.logins(o, T, 1), live)
        await Projector(feed.pool, live, None, None).drain()
        async with feed.pool.acquire() as conn:
            await conn.execute(
                "UPDATE customer_health SET score_model_version = $2 WHERE organization_id = $1",
                o,
                version,
            )
    promoting = Promotion(
        feed.pool, live.version, Metrics(), live_aggregates=aggregate_settings(live)
    )
    with capture_logs() as logs:
        await promoting.step()
        await promoting.step()  # compared once
    expected_v1 = aggregates_differ(v1_model(), live)
    differ = [e for e in logs if e["event"] == "promotion_aggregates_differ"]
    assert [(e["from_version"], e["settings"]) for e in differ] == (
        [("v1", expected_v1)] if expected_v1 else []
    ) + [("v9-slow", ["half_life_days"])]
    unknown = [e["from_version"] for e in logs if e["event"] == "promotion_aggregates_unknown"]
    assert unknown == ["v9-lost"]
    assert all(e["live_version"] == live.version for e in differ)


async def test_a_model_changed_under_the_same_version_is_named(feed: Feed) -> None:
    live = default_model()
    first = msgspec.structs.replace(live, version="v9-edited")
    edited = msgspec.structs.replace(
        first,
        signals=msgspec.structs.replace(
            first.signals, client_quantity_cap=first.signals.client_quantity_cap + 1
        ),
    )
    assert await record_model(feed.pool, first) == []
    with capture_logs() as logs:
        assert await record_model(feed.pool, edited) == ["signals"]
    assert [e["event"] for e in logs] == ["model_version_reused"]
    assert await record_model(feed.pool, first) == []  # the first record stands


async def test_promotion_reprojects_every_organization_under_the_new_version(
    feed: Feed, migrated_database: str
) -> None:
    old, new = v1_model(), default_model()
    orgs = [org(f"promote-{i}") for i in range(5)]
    for o in orgs:
        await feed.apply(feed.logins(o, T, 4), old)
    await Projector(feed.pool, old, None, None).drain()
    promoting = Promotion(feed.pool, new.version, Metrics(), page_size=2)
    assert await promoting.count() == 5

    # a page at a time: no more while the projector has not taken the last one
    assert await promoting.queue_page() == 2
    assert await promoting.queue_page() == 0
    projector = Projector(feed.pool, new, None, None)
    # consumption goes on meanwhile, under the new model
    await feed.apply(feed.logins(orgs[4], T + timedelta(days=4), 1), new)
    steps = 0
    while await promoting.count():
        await promoting.step()
        await projector.drain()
        steps += 1
        assert steps < 10
    assert promoting.remaining == 0
    async with superuser(migrated_database) as conn:
        rows = await conn.fetch(
            "SELECT h.organization_id, h.score_model_version, h.health_score::float8 AS score,"
            " h.churn_probability::float8 AS p, s.state_msgpack AS state"
            " FROM customer_health h JOIN organization_state s USING (organization_id)"
        )
    assert len(rows) == 5
    v1_scores = []
    for row in rows:
        assert row["score_model_version"] == new.version
        expected = project(unpack_state(row["state"]), new)
        assert expected is not None
        assert row["score"] == pytest.approx(expected.score, abs=0.005)
        assert row["p"] == pytest.approx(expected.churn_probability, abs=0.00005)
        v1 = project(unpack_state(row["state"]), old)
        assert v1 is not None
        v1_scores.append(v1.score)
    # the v1 scores differed: the promotion changed what the read model shows
    assert any(v1_score != row["score"] for v1_score, row in zip(v1_scores, rows, strict=True))


# --- imports -----------------------------------------------------------------------------


async def test_profiles_import_changes_state_and_read_model_bad_files_change_nothing(
    feed: Feed, migrated_database: str, tmp_path: Path
) -> None:
    known, unknown = org("profile-known"), org("profile-unknown")
    await feed.apply(feed.logins(known, T, 20))  # old enough to be expected to have some
    projector = Projector(feed.pool, default_model(), None, None)
    await projector.drain()

    async def missing_milestones() -> float:
        async with superuser(migrated_database) as conn:
            factors = orjson.loads(
                await conn.fetchval(
                    "SELECT risk_factors::text FROM customer_health WHERE organization_id = $1",
                    known,
                )
            )
        return float(sum(f["impact"] for f in factors if f["factor"] == "missing_milestones"))

    before = await missing_milestones()
    assert before < 0
    long_ago = T - timedelta(days=400)
    milestones = ";".join(
        f"{m.value}={(long_ago + timedelta(days=30)).isoformat()}" for m in MilestoneType
    )
    good = tmp_path / "profiles.csv"
    good.write_text(
        "organization_id,created_at,milestones\n"
        f"{known},{long_ago.isoformat()},{milestones}\n"
        f"{unknown},{long_ago.isoformat()},\n"
    )
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "organization_id,created_at,milestones\n"
        f"{known},{T.isoformat()},\n"
        f"{unknown},2020-01-01,\n"
        f"{known},,first_million=2020-01-01T00:00:00Z\n"
        # a mistyped year: the earliest time wins, so no later file could correct it
        f"{unknown},0202-04-01T00:00:00Z,\n"
    )
    async with superuser(migrated_database) as conn:
        state_before = await conn.fetchval(
            "SELECT state_msgpack FROM organization_state WHERE organization_id = $1", known
        )
    refused = cli(migrated_database, "import", "--profiles", str(bad))
    assert refused.returncode == 1
    assert f"{bad}: row 3, column created_at:" in refused.stderr
    assert f"{bad}: row 4, column milestones: unknown milestone 'first_million'" in refused.stderr
    mistyped = f"{bad}: row 5, column created_at: '0202-04-01T00:00:00Z': before 1990-01-01"
    assert mistyped in refused.stderr
    async with superuser(migrated_database) as conn:
        assert (
            await conn.fetchval(
                "SELECT state_msgpack FROM organization_state WHERE organization_id = $1", known
            )
            == state_before
        )
        assert await conn.fetchval("SELECT count(*) FROM read_model_pending") == 0
    with pytest.raises(ImportRefused):
        parse_profile_file(bad.read_text())

    async with feed.pool.acquire() as writer:
        profiles = parse_profile_file(good.read_text())
        assert await apply_profiles(writer, profiles, STEP, page=1) == 2
        assert await apply_profiles(writer, profiles, STEP, page=1) == 0  # idempotent
    async with superuser(migrated_database) as conn:
        states = {
            r["organization_id"]: unpack_state(r["state_msgpack"])
            for r in await conn.fetch(
                "SELECT organization_id, state_msgpack FROM organization_state"
            )
        }
        assert await conn.fetchval("SELECT count(*) FROM organizations WHERE id = $1", unknown) == 1
    assert states[known].created_at == long_ago.timestamp()
    assert (
        states[known].milestones["first_payment_received"]
        == (long_ago + timedelta(days=30)).timestamp()
    )
    assert states[unknown].created_at == long_ago.timestamp() and states[unknown].event_count == 0
    await projector.drain()
    assert await missing_milestones() == 0  # every milestone achieved, before the stream

    # the command applies the same file: nothing left to change
    again = cli(migrated_database, "import", "--profiles", str(good))
    assert again.returncode == 0, again.stderr
    assert "2 organizations" in again.stdout and "0 states changed" in again.stdout


# --- live alert outcomes ---------------------------------------------------------------


async def test_alert_decisions_are_labelled_from_the_support_stream_and_labels(
    feed: Feed, migrated_database: str
) -> None:
    x, y, z, w = (org(f"outcome-{name}") for name in "xyzw")
    live = quiet(default_model())  # the live episodes are the rows written below
    for o in (x, y, z, w):
        await feed.apply(feed.logins(o, T - timedelta(days=5), 3), live)
    # the support stream: x churns 10 days after its raise; the log reaches T + 70 days
    await feed.apply(feed.churn(x, T + timedelta(days=10)), live)
    await feed.apply(feed.logins(org("outcome-clock"), T + timedelta(days=70), 1), live)
    # usage and support partitions both reach T + 70 days (the watermark is their minimum)
    await feed.apply(feed.churn(org("outcome-clock"), T + timedelta(days=70)), live)
    async with superuser(migrated_database) as conn:
        x_ids = [
            await insert_live_raise(conn, x, T),
            await insert_live_raise(conn, x, T + timedelta(days=1), kind="risk_escalated"),
            await insert_live_raise(conn, x, T + timedelta(days=20), kind="recovered"),
        ]
        await insert_live_raise(conn, y, T)
        await insert_live_raise(conn, z, T + timedelta(days=5))
        await insert_live_raise(conn, w, T + timedelta(days=50))
    async with feed.pool.acquire() as writer:
        # y churned 90 days after its raise: beyond the 60-day horizon
        await import_labels(
            writer,
            parse_labels(
                f"organization_id,churned_at\n{y},{(T + timedelta(days=90)).isoformat()}\n"
            ),
            T + timedelta(days=100),
        )
    metrics = Metrics()
    labeller = OutcomeLabeller(feed.pool, metrics, GROUP, [USAGE, SUPPORT], default_model())
    await labeller.step()

    async def labels() -> dict[uuid.UUID, list[tuple[str, str | None]]]:
        async with superuser(migrated_database) as conn:
            rows = await conn.fetch(quality.ALERT_OUTCOMES)
        out: dict[uuid.UUID, list[tuple[str, str | None]]] = {}
        for r in rows:
            out.setdefault(r["organization_id"], []).append((r["kind"], r["outcome"]))
        return out

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels or None)

    async def locked_rows() -> int:
        # a row an ON CONFLICT ... DO UPDATE met is locked (its xmax set) whether or not
        # its WHERE let the update through
        async with superuser(migrated_database) as conn:
            return int(await conn.fetchval("SELECT count(*) FROM alert_outcomes WHERE xmax <> 0"))

    # a run with nothing new labels nothing and locks no row: every run locked every
    # alert ever raised and wrote it to the WAL (10.8 MB a minute at 200,000 alerts)
    assert await locked_rows() == 0
    await labeller.step()
    assert await locked_rows() == 0

    got = await labels()
    # every decision of x's episode carries its outcome; the clock org has none
    assert sorted(got[x]) == [
        ("recovered", "churned"),
        ("risk_escalated", "churned"),
        ("risk_raised", "churned"),
    ]
    assert got[y] == [("risk_raised", "retained")]  # known: labels to T + 100 days
    assert got[z] == [("risk_raised", "retained")]  # the log reached T + 70 > T + 5 + 60
    assert got[w] == [("risk_raised", None)]  # not known yet
    async with superuser(migrated_database) as conn:
        assert await conn.fetchval(
            "SELECT churned_at FROM alert_outcomes WHERE alert_id = $1", x_ids[0]
        ) == T + timedelta(days=10)
    assert sample("healthscore_alert_episodes", outcome="churned") == 1
    assert sample("healthscore_alert_episodes", outcome="retained") == 2
    assert sample("healthscore_alert_episodes", outcome="pending") == 1
    assert sample("healthscore_alert_precision") == pytest.approx(1 / 3)
    # churners: x (support stream), y (labels) and the clock organization; alerted
    # in the 60 days before: x alone, 10 days ahead
    assert sample("healthscore_churned_organizations") == 3
    assert sample("healthscore_churned_organizations_alerted") == 1
    lead = "healthscore_alert_lead_time_seconds"
    assert sample(lead, percentile="50") == pytest.approx(10 * DAY)

    async def summary() -> asyncpg.Record:
        async with superuser(migrated_database) as conn:
            row = await conn.fetchrow("SELECT * FROM score_quality_summary")
        assert row is not None
        return row

    # the dashboard's summary: the same figures beside the live model's backtest
    first = await summary()
    assert (first["episodes_churned"], first["episodes_retained"], first["episodes_pending"]) == (
        1,
        2,
        1,
    )
    assert (first["churners"], first["churners_alerted"]) == (3, 1)
    assert first["lead_days_quartiles"] == pytest.approx([10, 10, 10])
    assert first["score_model_version"] == default_model().version
    shown = json.loads(first["backtest"])
    assert shown["figures"]["auc_30d_churn_probability"] == pytest.approx(
        default_model().evaluation["held_out"]["auc_30d_churn_probability"]  # type: ignore[index]
    )
    assert shown["held_out_organizations"] > 0 and shown["source"]

    # a later import: z churned 30 days after its raise (and an organization the
    # service has not seen, which counts nowhere)
    async with feed.pool.acquire() as writer:
        await import_labels(
            writer,
            parse_labels(
                f"organization_id,churned_at\n{z},{(T + timedelta(days=35)).isoformat()}\n"
                f"{org('outcome-unseen')},{T.isoformat()}\n"
            ),
            T + timedelta(days=100),
        )
    await labeller.step()
    assert (await labels())[z] == [("risk_raised", "churned")]
    assert sample("healthscore_alert_precision") == pytest.approx(2 / 3)
    assert sample("healthscore_churned_organizations") == 4
    assert sample("healthscore_churned_organizations_alerted") == 2
    assert sample(lead, percentile="50") == pytest.approx(20 * DAY)
    assert sample(lead, percentile="75") == pytest.approx(25 * DAY)
    later = await summary()
    assert (later["episodes_churned"], later["episodes_retained"]) == (2, 1)
    assert (later["churners"], later["churners_alerted"]) == (4, 2)
    assert later["computed_at"] > first["computed_at"]


async def test_no_episode_is_labelled_retained_while_a_support_partition_is_unread(
    feed: Feed, migrated_database: str, kafka_bootstrap: str
) -> None:
    """The labeller's watermark waits, as the silence sweep's does, for an input
    partition whose log holds records none of which is applied yet: the churn that
    labels an episode may be in it. Before, such a partition (no stored progress) was
    left out of the minimum: an episode raised 70 days before the usage stream's
    frontier was labelled `retained` though its support stream was not read yet
    (review 32)."""
    from healthscore.service.kafka_clients import KafkaConnection
    from healthscore.service.ops.lag import UnreadPartitions

    topics = await make_topics(kafka_bootstrap, partitions=2)
    z = org("unread-z")
    pipeline = BatchPipeline(
        pool=feed.pool,
        decoder=Decoder(topics.usage, topics.support, 64 * 1024),
        model=quiet(default_model()),
        consumer_group=GROUP,
        rescore_step_seconds=STEP,
        silence_rescoring=False,
    )
    # usage partition 0 and support partition 0 reach T + 70 days, applied (usage
    # partition 1 holds nothing: it holds nothing back)
    logins = (
        feed.logins(z, T - timedelta(days=5), 3)
        + feed.logins(org("unread-kept"), T - timedelta(days=5), 3)
        + feed.logins(org("unread-clock"), T, 71)
    )
    usage = [
        msgspec.structs.replace(r, topic=topics.usage, partition=0, offset=i)
        for i, r in enumerate(logins)
    ]
    assert (await pipeline.process(usage)).applied == len(usage)
    clock = [
        msgspec.structs.replace(r, topic=topics.support, partition=0, offset=i)
        for i, r in enumerate(feed.churn(org("unread-clock"), T + timedelta(days=70)))
    ]
    assert (await pipeline.process(clock)).applied == 2
    # support partition 1 holds z's churn, 30 days after its raise, not read yet
    churn = [
        msgspec.structs.replace(r, topic=topics.support, partition=1, offset=i)
        for i, r in enumerate(feed.churn(z, T + timedelta(days=30)))
    ]
    producer = await make_producer(kafka_bootstrap)
    try:
        for record in churn:
            sent = await producer.send_and_wait(
                record.topic, record.value, key=record.key, partition=1
            )
            assert sent.offset == record.offset
    finally:
        await producer.stop()
    kept = org("unread-kept")  # raised, never churns: retained once the log is read
    async with superuser(migrated_database) as conn:
        await insert_live_raise(conn, z, T)
        await insert_live_raise(conn, kept, T)

    async def outcome(organization: uuid.UUID = z) -> str | None:
        async with superuser(migrated_database) as conn:
            rows = await conn.fetch(
                "SELECT outcome FROM alert_outcomes WHERE organization_id = $1", organization
            )
        assert len(rows) == 1
        found: str | None = rows[0]["outcome"]
        return found

    inputs = [topics.usage, topics.support]
    unread = UnreadPartitions(KafkaConnection(kafka_bootstrap), inputs)
    labeller = OutcomeLabeller(feed.pool, Metrics(), GROUP, inputs, default_model(), unread=unread)
    with capture_logs() as logs:
        await labeller.step()
    assert await outcome() is None  # not known: its support stream is not read yet
    assert [e["unread_partitions"] for e in logs if e["event"] == "alert_outcomes_wait"] == [
        [f"{topics.support}:1"]
    ]
    # the partition's records applied: the churn labels the episode
    assert (await pipeline.process(churn)).applied == 2
    await labeller.step()
    assert await outcome() == "churned"
    # support partition 1 reaches T + 70 days too: the log is read past kept's horizon
    later = [
        msgspec.structs.replace(r, topic=topics.support, partition=1, offset=2 + i)
        for i, r in enumerate(feed.churn(org("unread-clock-1"), T + timedelta(days=70)))
    ]
    assert (await pipeline.process(later)).applied == 2
    await labeller.step()
    assert await outcome(kept) == "retained"
    # a partition not read yet again (usage partition 1 receives its first record): the
    # watermark is unknown, and what it labelled stays (review 32d: retained episodes
    # flipped back to unlabelled until the partition's first batch)
    first = feed.logins(org("unread-late"), T + timedelta(days=70), 1)[0]
    producer = await make_producer(kafka_bootstrap)
    try:
        await producer.send_and_wait(topics.usage, first.value, key=first.key, partition=1)
    finally:
        await producer.stop()
    with capture_logs() as logs:
        await labeller.step()
    assert [e["unread_partitions"] for e in logs if e["event"] == "alert_outcomes_wait"] == [
        [f"{topics.usage}:1"]
    ]
    assert (await outcome(kept), await outcome()) == ("retained", "churned")


async def test_labels_import_command_labels_the_pending_episode(
    feed: Feed, migrated_database: str, tmp_path: Path
) -> None:
    w = org("labels-cli")
    await feed.apply(feed.logins(w, T, 2), quiet(default_model()))
    async with superuser(migrated_database) as conn:
        await insert_live_raise(conn, w, T + timedelta(days=1))
    labeller = OutcomeLabeller(feed.pool, Metrics(), GROUP, [USAGE, SUPPORT], default_model())
    await labeller.step()
    assert labeller.latest is not None and labeller.latest.pending == 1
    labels = tmp_path / "churn.csv"
    labels.write_text(f"organization_id,churned_at\n{w},\n")
    until = (T + timedelta(days=61)).isoformat()
    result = cli(migrated_database, "import", "--labels", str(labels), "--labels-until", until)
    assert result.returncode == 0, result.stderr
    assert "labels: 1 organizations" in result.stdout and "(0 churned)" in result.stdout
    await labeller.step()
    assert labeller.latest.retained == 1 and labeller.latest.pending == 0
    labels.write_text(f"organization_id,churned_at\n{w},{(T + timedelta(days=40)).isoformat()}\n")
    assert cli(migrated_database, "import", "--labels", str(labels)).returncode == 0
    await labeller.step()
    assert labeller.latest.churned == 1 and labeller.latest.retained == 0
    bad = tmp_path / "bad.csv"
    bad.write_text(f"organization_id,churned_at\n{w},soon\n")
    refused = cli(migrated_database, "import", "--labels", str(bad))
    assert refused.returncode == 1
    assert f"{bad}: row 2, column churned_at: 'soon'" in refused.stderr
    # review 32: a labels horizon after now labelled yesterday's raises retained at
    # once; a page of -1 rows imported nothing and said so with exit 0, of 0 a traceback
    future = cli(
        migrated_database, "import", "--labels", str(labels), "--labels-until", "2999-01-01T00:00Z"
    )
    assert future.returncode == 2 and "is after the import's time" in future.stderr
    for size in ("0", "-1"):
        paged = cli(migrated_database, "import", "--labels", str(labels), "--page-size", size)
        assert paged.returncode == 2 and "must be at least 1" in paged.stderr
    empty = tmp_path / "empty.csv"
    empty.write_text("organization_id,churned_at\n")
    said = cli(migrated_database, "import", "--labels", str(empty))
    assert said.returncode == 0 and "no organization in" in said.stdout
    # a churn after the labels' horizon (here the import time) is no label
    bad.write_text(
        f"organization_id,churned_at\n{w},{(datetime.now(UTC) + timedelta(days=3)).isoformat()}\n"
    )
    refused = cli(migrated_database, "import", "--labels", str(bad))
    assert refused.returncode == 1
    assert "is after the time the labels are known until" in refused.stderr


# --- the running service ---------------------------------------------------------------


async def test_the_service_scores_a_shadow_model_and_publishes_only_live_alerts(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    candidate_path = tmp_path / "health_model.eager.json"
    candidate_path.write_bytes(msgspec.json.encode(eager(default_model(), "v2-eager")))
    topics = await make_topics(kafka_bootstrap)
    settings = service_settings(
        migrated_database,
        kafka_bootstrap,
        topics,
        shadow_model_path=candidate_path,
        shadow_interval_seconds=0.2,
        outcome_interval_seconds=0.5,
    )
    orgs = [org(f"service-{i}") for i in range(6)]
    now = datetime.now(UTC)
    events = [
        {
            "event_id": str(uuid.uuid4()),
            "organization_id": str(o),
            "type": "login",
            "occurred_at": (now - timedelta(days=3, hours=i)).isoformat(),
        }
        for o in orgs
        for i in range(3)
    ]
    producer = await make_producer(kafka_bootstrap)
    try:
        async with running_service(settings) as service:
            await produce_json(producer, topics.usage, events)
            await wait_for(
                migrated_database,
                "SELECT count(*) FROM shadow_health WHERE scored_at = ("
                " SELECT max(scored_at) FROM shadow_health)",
                lambda n: n is not None and n >= 1,
            )
            await wait_for(
                migrated_database,
                "SELECT count(*) FROM shadow_alerts WHERE kind = 'risk_raised'",
                lambda n: n == len(orgs),
            )
            await wait_for(
                migrated_database,
                "SELECT count(*) FROM alert_outbox WHERE published_at IS NULL",
                lambda n: n == 0,
            )
            live_ids = {
                str(r)
                for r in await _column(migrated_database, "SELECT alert_id FROM alert_outbox")
            }
            raised = await _column(
                migrated_database, "SELECT count(*) FROM alert_outbox WHERE kind = 'risk_raised'"
            )
            url = f"http://127.0.0.1:{service.ops_port}/metrics"
            pending = f'healthscore_alert_episodes{{outcome="pending"}} {float(raised[0])}'
            async with httpx.AsyncClient() as client:
                for _ in range(300):
                    text = (await client.get(url)).text
                    if "healthscore_shadow_organizations_scored 6.0" in text and pending in text:
                        break
                    await asyncio.sleep(0.1)
        published = await consume_all(
            kafka_bootstrap, topics.alerts, expect=len(live_ids), settle=1.0
        )
    finally:
        await producer.stop()
    shadow_ids = {
        str(r) for r in await _column(migrated_database, "SELECT alert_id FROM shadow_alerts")
    }
    on_topic = {orjson.loads(r.value)["alert_id"] for r in published}
    assert on_topic == live_ids and len(published) == len(live_ids)
    assert not on_topic & shadow_ids
    live = default_model().version
    assert f'healthscore_shadow_model_info{{candidate="v2-eager",live="{live}"}} 1.0' in text
    assert 'healthscore_shadow_raises{model="candidate"} 6.0' in text
    assert "healthscore_organizations_on_other_model_version 0.0" in text
    assert "healthscore_shadow_organizations_scored 6.0" in text
    assert pending in text  # every live raise labelled, none known yet
    assert "healthscore_alert_precision NaN" in text


async def _column(url: str, query: str) -> list[Any]:
    async with superuser(url) as conn:
        return [r[0] for r in await conn.fetch(query)]


# --- usage volume drift ----------------------------------------------------------------


async def test_the_usage_drift_gauge_compares_a_sample_with_the_models_reference(
    feed: Feed,
) -> None:
    from healthscore.service.ops.drift import UsageDrift

    # 30 one-user organizations logging in daily for 20 days, the same days: every one
    # has the same decayed logins at the newest login, known in closed form
    start = T + timedelta(days=150)
    organizations = [org(f"drift-{i}") for i in range(30)]
    await feed.apply([r for o in organizations for r in feed.logins(o, start, 20)])
    model = default_model()
    assert model.usage_reference is not None
    half_life = model.half_life_days.logins
    logins = sum(2 ** (-day / half_life) for day in range(20))
    metrics = Metrics()
    drift = UsageDrift.for_model(feed.pool, metrics, model, sample_size=10)
    assert drift is not None
    expected = logins / model.usage_reference.logins_per_user
    for _ in range(3):  # each from a random id, wrapping around the key space: always 10
        await drift.step()
        assert metrics.usage_volume_sampled._value.get() == 10
        ratio = metrics.usage_volume_ratio.labels("logins_per_user", "v4")._value.get()
        assert ratio == pytest.approx(expected, rel=1e-9)
    # a measure v4 does not judge by (its factor has no points) gets no ratio
    assert math.isnan(metrics.usage_volume_ratio.labels("logins", "v4")._value.get())
    few_logins = msgspec.structs.replace(
        model.engagement, login_points=10.0, login_per_user_points=44.0
    )
    judging_logins = msgspec.structs.replace(model, engagement=few_logins)
    assert judging_logins.usage_reference is not None
    both = UsageDrift.for_model(feed.pool, metrics, judging_logins, sample_size=10)
    assert both is not None
    await both.step()
    # each measure against its own reference (one user: logins per user are the logins)
    ratio = metrics.usage_volume_ratio.labels("logins", "v4")._value.get()
    assert ratio == pytest.approx(logins / judging_logins.usage_reference.logins, rel=1e-9)
    ratio = metrics.usage_volume_ratio.labels("logins_per_user", "v4")._value.get()
    assert ratio == pytest.approx(expected, rel=1e-9)
    whole = UsageDrift(feed.pool, metrics, model, model.usage_reference, sample_size=1000)
    await whole.step()
    assert metrics.usage_volume_sampled._value.get() == 30
    # from past the last id: the whole sample from the start of the key space
    last = UsageDrift(feed.pool, metrics, model, model.usage_reference, sample_size=10)
    with unittest.mock.patch("uuid.uuid4", return_value=uuid.UUID(int=2**128 - 1)):
        await last.step()
    assert metrics.usage_volume_sampled._value.get() == 10
    # a measure the model judges by that the sample never shows (no value action): none
    deep = msgspec.structs.replace(model.adoption, depth_points=20.0, feature_share_points=80.0)
    judging_depth = msgspec.structs.replace(model, adoption=deep)
    depth = UsageDrift.for_model(feed.pool, metrics, judging_depth, sample_size=10)
    assert depth is not None and "value_actions" in depth._judged
    await depth.step()
    assert math.isnan(metrics.usage_volume_ratio.labels("value_actions", "v4")._value.get())
    assert UsageDrift.for_model(feed.pool, metrics, v1_model(), 10) is None  # no reference
