"""Apply a batch's computed effects: one set-based statement per table, sent as one.

Identifiers travel as the core holds them, canonical UUID strings: asyncpg
encodes a string for a uuid parameter directly, without a `uuid.UUID` each.

The states are saved before these, by `healthscore.store.states`; the read
model (`customer_health`, the health feed) is not among them: the state save
queues each changed organization for the projector
(`healthscore.service.projector`), which writes it off the event path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

import orjson

from healthscore.contracts.alerts import ChurnRiskAlert, HealthAction, RiskFactor
from healthscore.core.effects import BatchEffects, RaisedAlert
from healthscore.core.scoring.model import ScoreModel
from healthscore.store import Connection, sql
from healthscore.store.combined import Part, combine
from healthscore.store.records import interaction_columns, to_datetime

# An outbox row's `emitted_at` is a placeholder (the epoch); the relay stamps
# the wall clock when it actually publishes.


def alert_payload(alert: RaisedAlert) -> str:
    health = alert.health
    message = ChurnRiskAlert.model_construct(
        alert_id=alert.decision.alert_id,
        organization_id=UUID(alert.organization_id),
        kind=alert.decision.kind,
        health_score=health.score,
        previous_score=alert.decision.previous_score,
        health_status=health.status,
        churn_probability=health.churn_probability,
        risk_level=health.risk_level,
        risk_factors=[
            RiskFactor(factor=f.factor, value=f.value, impact=f.impact, detail=f.detail)
            for f in health.risk_factors
        ],
        caused_by=[UUID(e) for e in alert.caused_by],
        scored_at=datetime.fromtimestamp(alert.scored_at, UTC),
        emitted_at=datetime.fromtimestamp(0.0, UTC),
        trigger=alert.decision.trigger,
        episode=alert.decision.episode,
        score_model_version=alert.decision.score_model_version or None,
        path_to_healthy=[
            HealthAction(
                action=a.action,
                factor=a.factor,
                impact=a.impact,
                interaction_id=None if a.interaction_id is None else UUID(a.interaction_id),
            )
            for a in alert.decision.path_to_healthy
        ],
        no_path_reason=alert.decision.no_path_reason,
        episode_id=alert.decision.episode_id,
    )
    return message.model_dump_json()


async def write_effects(
    conn: Connection,
    effects: BatchEffects,
    model: ScoreModel,
    timings_ms: dict[str, float] | None = None,
    also: Sequence[Part] = (),
) -> None:
    """Write every effect but the states, which `healthscore.store.states` saved first,
    with the statements of `also` (the batch's offsets), in one round trip.

    With `timings_ms`, record the milliseconds it took (`w_effects`).
    """
    started = time.perf_counter()
    parts: list[Part] = []
    if effects.interactions:
        records = list(effects.interactions.values())
        assignees = sorted({UUID(r.assigned_to) for r in records if r.assigned_to})
        if assignees:
            # assigned_to references user_profiles; an unknown staff member gets a
            # placeholder profile with the unprivileged `member` role, so an event
            # can never grant anyone dashboard access. Before, on its own: the
            # interactions' foreign key must find it.
            await conn.execute(sql.ENSURE_USER_PROFILES, assignees)
        parts.append((sql.UPSERT_INTERACTIONS, interaction_columns(records)))

    if effects.milestones:
        rows = effects.milestones
        parts.append(
            (
                sql.INSERT_MILESTONES,
                [
                    [org for org, _ in rows],
                    [str(m.milestone_type) for _, m in rows],
                    [to_datetime(m.achieved_at) for _, m in rows],
                    [m.event_id for _, m in rows],
                    [m.health_score_impact for _, m in rows],
                    [None if m.reward_type is None else str(m.reward_type) for _, m in rows],
                    [m.reward_value for _, m in rows],
                ],
            )
        )

    if effects.rescored:
        # each organization's last score of each event-time day it was scored on
        history = effects.history()
        parts.append(
            (
                sql.UPSERT_SCORE_HISTORY,
                [
                    [r.organization_id for r in history],
                    [to_datetime(r.scored_at) for r in history],
                    [r.health.score for r in history],
                    [r.health.churn_probability for r in history],
                    [str(r.health.risk_level) for r in history],
                    [orjson.dumps(r.health.components).decode() for r in history],
                    model.version,
                    [str(r.cause) for r in history],
                ],
            )
        )

    if effects.alerts:
        alerts = effects.alerts
        parts.append(
            (
                sql.INSERT_ALERTS,
                [
                    [a.decision.alert_id for a in alerts],
                    [a.organization_id for a in alerts],
                    [str(a.decision.kind) for a in alerts],
                    [a.decision.episode for a in alerts],
                    [alert_payload(a) for a in alerts],
                ],
            )
        )
    parts.extend(also)
    if parts:
        statement, args = combine(parts)
        await conn.execute(statement, *args)
    if timings_ms is not None:
        timings_ms["w_effects"] = round((time.perf_counter() - started) * 1000, 1)
