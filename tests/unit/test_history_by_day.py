"""The score history's rows: one per organization per event-time day, the day's last score.

A batch hands the store at most one row per (organization, UTC day), each the
last score the batch made that day (`BatchEffects.history`); the store keeps a
day's latest (`UPSERT_SCORE_HISTORY`). That the stored rows do not depend on the
batch cuts is checked with the silence rescorings (tests/unit/test_silence_rescoring.py).
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta

from healthscore.core.effects import compute_batch_effects
from healthscore.core.enums import HistoryCause, UsageType
from healthscore.core.events import UsageEvent
from healthscore.core.scoring.model import DAY, default_model
from healthscore.store.records import to_datetime

MODEL = default_model()
MIDNIGHT = datetime(2026, 3, 10, tzinfo=UTC)
EPOCH = date(1970, 1, 1)


def _login(org: uuid.UUID, at: datetime) -> UsageEvent:
    return UsageEvent(
        event_id=uuid.uuid4(), organization_id=org, type=UsageType.LOGIN, occurred_at=at
    )


def test_one_row_per_organization_and_day_each_the_days_last_score() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    at = [
        MIDNIGHT + timedelta(hours=1),
        MIDNIGHT + timedelta(hours=23, minutes=59, seconds=59, microseconds=999_999),
        MIDNIGHT + timedelta(days=1),  # the next day, at its first instant
        MIDNIGHT + timedelta(days=1, hours=5),
    ]
    events = [_login(a, t) for t in at] + [_login(b, at[0])]
    effects = compute_batch_effects(events, {}, {}, MODEL)
    rows = {(r.organization_id, to_datetime(r.scored_at)) for r in effects.history()}
    assert rows == {(str(a), at[1]), (str(a), at[3]), (str(b), at[0])}
    assert {r.cause for r in effects.history()} == {HistoryCause.EVENTS}
    # each the score the batch made last that day: the organization's last one for b
    assert effects.daily[(str(b), int(at[0].timestamp() // DAY))] is effects.rescored[str(b)]
    last_of_a = effects.daily[(str(a), int(at[3].timestamp() // DAY))]
    assert last_of_a is effects.rescored[str(a)]


def test_a_late_event_scores_on_the_day_of_the_newest() -> None:
    """A late event is scored as of the newest event time, so on the newest's day."""
    org = uuid.uuid4()
    effects = compute_batch_effects(
        [_login(org, MIDNIGHT + timedelta(days=2)), _login(org, MIDNIGHT + timedelta(hours=3))],
        {},
        {},
        MODEL,
    )
    assert [to_datetime(r.scored_at) for r in effects.history()] == [MIDNIGHT + timedelta(days=2)]


def test_the_core_and_the_database_agree_on_the_day() -> None:
    """The core's day (as_of // DAY) is the UTC date of the timestamp the store writes.

    The table's `day` is generated from scored_at; were they to disagree at a
    day's edge, two rows of one batch could land on one day and the upsert would
    fail the batch.
    """
    rng = random.Random(12)
    edges = [MIDNIGHT + timedelta(days=d, microseconds=u) for d in range(-3, 3) for u in (-1, 0, 1)]
    spread = [
        datetime(1990, 1, 1, tzinfo=UTC)
        + timedelta(days=rng.uniform(0, 60 * 365), microseconds=rng.randrange(1_000_000))
        for _ in range(5000)
    ]
    for moment in edges + spread:
        seconds = moment.timestamp()
        stored = to_datetime(seconds)
        assert stored == moment
        assert int(seconds // DAY) == (stored.date() - EPOCH).days, moment
