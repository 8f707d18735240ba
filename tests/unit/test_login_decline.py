"""The login baseline (state) and login_decline (off in v1-v4): logins against the organization's
own usual level, not against every customer's."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

import msgspec
import orjson
import pytest

from healthscore.contracts.enums import UsageType
from healthscore.core.events import UsageEvent
from healthscore.core.scoring.aggregate import apply_usage, new_state
from healthscore.core.scoring.model import (
    DAY,
    V3_MODEL_PATH,
    ScoreModel,
    parse_model,
    v1_model,
)
from healthscore.core.scoring.results import HealthScore
from healthscore.core.scoring.score import score
from healthscore.core.scoring.state import OrganizationState
from healthscore.errors import ModelConfigError

ORG = UUID("0b7c1e52-4a8d-4f6e-9d3a-2c5b8e1f7a90")
START = 1_780_000_000.0
USERS = [uuid4() for _ in range(4)]


def config_with(points: float) -> dict[str, object]:
    """v3's config with `points` of its engagement moved to login_decline."""
    config: dict[str, object] = orjson.loads(V3_MODEL_PATH.read_bytes())
    engagement = config["engagement"]
    assert isinstance(engagement, dict)
    engagement["login_points"] = float(engagement["login_points"]) - points
    assert engagement["login_points"] >= 0.0
    engagement["login_decline_points"] = points
    engagement["login_decline_full"] = 0.5
    return config


@pytest.fixture(scope="module")
def model() -> ScoreModel:
    return parse_model(orjson.dumps(config_with(10.0)))


def login(at: float, user: UUID | None = None) -> UsageEvent:
    return UsageEvent(
        event_id=uuid4(),
        organization_id=ORG,
        user_id=user,
        type=UsageType.LOGIN,
        occurred_at=datetime.fromtimestamp(at, UTC),
        quantity=1,
        feature=None,
        properties=None,
    )


def team_logging_in(model: ScoreModel, days: int, per_day: list[int]) -> OrganizationState:
    """Four users logging in at 10:00, `per_day[d]` logins a day in the d-th stretch of
    equal length (the same count for every day of a stretch)."""
    state = new_state(str(ORG))
    stretch = days // len(per_day)
    for day in range(days):
        count = per_day[min(day // stretch, len(per_day) - 1)]
        for index in range(count):
            at = START + day * DAY + 36_000.0 + index * 60.0
            apply_usage(state, login(at, USERS[index % len(USERS)]), model)
    return state


def factor(health: HealthScore, name: str) -> float:
    return sum(f.impact for f in health.risk_factors if f.factor == name)


def test_a_login_adds_to_the_login_baseline_and_nothing_else_does(model: ScoreModel) -> None:
    state = new_state(str(ORG))
    apply_usage(state, login(START), model)
    feature = msgspec.structs.replace(login(START + DAY), type=UsageType.FEATURE_USED)
    apply_usage(state, feature, model)
    assert state.decayed["logins_baseline"] == pytest.approx(2 ** (-1 / 60))
    assert state.decayed["logins"] == pytest.approx(2 ** (-1 / 14))
    assert state.decayed["activity"] == pytest.approx(2 ** (-1 / 7) + 1.0)


def test_a_steady_team_loses_nothing_and_a_declining_one_does(model: ScoreModel) -> None:
    steady = team_logging_in(model, 120, [8])
    health = score(steady, START + 120 * DAY, model)
    assert factor(health, "login_decline") == 0.0
    # the last 40 days at a quarter of the usual logins
    declining = team_logging_in(model, 120, [8, 8, 2])
    health = score(declining, START + 120 * DAY, model)
    (reported,) = [f for f in health.risk_factors if f.factor == "login_decline"]
    # the 14-day logins against a 60-day baseline that has taken in part of the fall
    assert 0.4 < reported.value < 0.7
    assert reported.impact < -1.0
    assert "usual level" in reported.detail


def test_a_team_that_always_logs_in_less_is_not_judged_for_it(model: ScoreModel) -> None:
    """The shifted population's habit: fewer logins at the same health. few_logins
    (absolute) reads it as lower health; login_decline does not."""
    as_of = START + 120 * DAY
    usual = score(team_logging_in(model, 120, [2]), as_of, model)
    fewer = score(team_logging_in(model, 120, [1]), as_of, model)
    assert factor(usual, "login_decline") == factor(fewer, "login_decline") == 0.0
    assert fewer.components["engagement"] < usual.components["engagement"]  # few_logins
    # and they decline alike when both fall to half their own level
    usual = score(team_logging_in(model, 120, [4, 4, 2]), as_of, model)
    fewer = score(team_logging_in(model, 120, [2, 2, 1]), as_of, model)
    assert factor(usual, "login_decline") < -1.0
    assert factor(fewer, "login_decline") == pytest.approx(factor(usual, "login_decline"), abs=0.05)


def test_a_state_written_before_the_login_baseline_existed_loses_nothing(
    model: ScoreModel,
) -> None:
    declining = team_logging_in(model, 120, [8, 8, 2])
    old = msgspec.structs.replace(
        declining, decayed={k: v for k, v in declining.decayed.items() if k != "logins_baseline"}
    )
    health = score(old, START + 120 * DAY, model)
    assert factor(health, "login_decline") == 0.0
    assert health.score > score(declining, START + 120 * DAY, model).score


def test_a_login_never_lowers_the_score_while_logins_are_below_usual(model: ScoreModel) -> None:
    state = team_logging_in(model, 120, [8, 8, 2])
    as_of = START + 120 * DAY
    before = score(state, as_of, model).score
    apply_usage(state, login(as_of, USERS[0]), model)
    assert score(state, as_of, model).score > before


def test_models_without_login_decline_do_not_read_the_login_baseline() -> None:
    v1 = v1_model()
    state = team_logging_in(v1, 120, [8, 8, 2])
    without = msgspec.structs.replace(
        state, decayed={k: v for k, v in state.decayed.items() if k != "logins_baseline"}
    )
    as_of = START + 120 * DAY
    assert score(state, as_of, v1) == score(without, as_of, v1)


def test_the_login_decline_points_count_in_the_engagement_sum() -> None:
    config = config_with(10.0)
    engagement = config["engagement"]
    assert isinstance(engagement, dict)
    engagement["login_decline_points"] = 20.0
    with pytest.raises(ModelConfigError, match="engagement: the \\*_points must sum to 100"):
        parse_model(orjson.dumps(config))
