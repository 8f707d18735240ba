"""The model config loader: the shipped v4, v3, v2 and v1 files, and every rejection
naming its path."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from healthscore.contracts.enums import MilestoneType
from healthscore.core.scoring.model import (
    DEFAULT_MODEL_PATH,
    SIGNALS,
    V1_MODEL_PATH,
    V2_MODEL_PATH,
    V3_MODEL_PATH,
    ScoreModel,
    default_model,
    load_model,
    parse_model,
    v1_model,
    v2_model,
    v3_model,
)
from healthscore.errors import ModelConfigError

# the rejections are shown on the v1 file (the v2 one has the same structure, plus
# the optional fields v2 added, tested below)
DEFAULT: dict[str, Any] = json.loads(V1_MODEL_PATH.read_text())
EXIT_BELOW_ENTER = "alerts.exit_probability: must be < enter_probability"


def write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(config))
    return path


def mutated(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    config = copy.deepcopy(DEFAULT)
    change(config)
    return config


def test_default_model_is_v4_and_complete() -> None:
    model = default_model()
    assert isinstance(model, ScoreModel)
    assert model.version == "v4"
    assert DEFAULT_MODEL_PATH.name == "health_model.v4.json"
    assert set(model.milestone_rules) == set(MilestoneType)
    assert set(model.half_life_seconds) == set(SIGNALS)
    assert model.alerts.exit_probability < model.alerts.enter_probability
    assert default_model() is model  # loaded once
    # v4 says what changed and carries the figures it was accepted on, against v3
    assert model.changelog and model.changelog[0].startswith("v4:")
    assert any(line.startswith("v3:") for line in model.changelog)
    assert any(line.startswith("v2:") for line in model.changelog)
    assert any(line.startswith("v1:") for line in model.changelog)
    assert model.evaluation is not None
    # v4 measures logins per active user and the share of the organization's own
    # features in use instead of the whole team's logins (a size factor now), and keeps
    # v3's alert settings; it was written with --force: a little worse than v3 on the
    # reference held-out organizations, within every target there (docs/score-quality.md)
    v3 = v3_model()
    assert model.engagement.login_points == 0.0 < v3.engagement.login_points
    assert model.engagement.login_per_user_points > 0.0
    assert model.adoption.feature_share_points > 0.0
    assert model.alerts == v3.alerts
    held_out = model.evaluation["held_out"]
    assert "v3" in model.evaluation["current_model_held_out"]
    assert held_out["auc_30d_churn_probability"] >= 0.93  # the targets
    assert held_out["brier_skill_vs_base_rate"] >= 0.40
    assert held_out["false_alerts_per_100_healthy_per_month"] <= 5.0


def test_v3_is_kept_and_loads() -> None:
    model = v3_model()
    assert model.version == "v3"
    assert V3_MODEL_PATH.name == "health_model.v3.json"
    assert model.changelog[0].startswith("v3:")
    assert model.evaluation is not None
    held_out = model.evaluation["held_out"]
    current = model.evaluation["current_model_held_out"]["v2"]
    assert held_out["auc_30d_churn_probability"] >= current["auc_30d_churn_probability"]
    assert held_out["brier_30d"] <= current["brier_30d"]
    # v3's changes from v2 that are not just fitted numbers: a softer cancellation
    # ceiling, and alerts that wait longer before a raise and after a recovery
    v2 = v2_model()
    assert v2.ceilings.open_cancellation_request < model.ceilings.open_cancellation_request < 100
    assert model.alerts.persist_hours > v2.alerts.persist_hours
    assert model.alerts.cooldown_hours > v2.alerts.cooldown_hours
    # ... while the factors' points, scales and weights are v2's (the same fit
    # reproduces them, to the last bits of a float)
    for new, old in (
        (model.engagement, v2.engagement),
        (model.support, v2.support),
        (model.weights.established, v2.weights.established),
    ):
        assert msgspec.to_builtins(new) == pytest.approx(msgspec.to_builtins(old), rel=1e-9)


def test_v2_is_kept_and_loads() -> None:
    model = v2_model()
    assert model.version == "v2"
    assert V2_MODEL_PATH.name == "health_model.v2.json"
    assert model.changelog[0].startswith("v2:")
    assert model.evaluation is not None
    assert (
        model.evaluation["held_out"]["auc_30d_churn_probability"]
        > (model.evaluation["current_model_held_out"]["v1"]["auc_30d_churn_probability"])
    )
    # v2's changes from v1 that are not just numbers
    assert model.engagement.decline_points > 0
    assert model.ceilings.follow_signals and model.ceilings.open_escalation == 100
    assert model.alerts.persist_hours > 0 and model.alerts.drop_points == 100


def test_v1_is_kept_and_loads_unchanged() -> None:
    model = v1_model()
    assert model.version == "v1"
    assert model.half_life_seconds["activity"] == 7 * 86400
    assert model.engagement.decline_points == 0  # the fields added since take v1's meaning
    assert model.alerts.persist_hours == 0 and model.alerts.immediate_probability is None
    assert not model.ceilings.follow_signals
    assert model.changelog == [] and model.evaluation is None


@pytest.mark.parametrize(
    ("change", "value", "message"),
    [
        ("engagement.decline_full", 1.5, "engagement.decline_full: must be <= 1"),
        ("engagement.decline_prior_events", -1, "engagement.decline_prior_events: must be >= 0"),
        ("alerts.persist_hours", -1, "alerts.persist_hours: must be >= 0"),
        ("half_life_days.activity_baseline", 0, "half_life_days.activity_baseline: must be > 0"),
        ("changelog", "text", "changelog: Expected `array`, got `str`"),
    ],
)
def test_fields_added_in_v2_are_validated(change: str, value: Any, message: str) -> None:
    config = json.loads(DEFAULT_MODEL_PATH.read_text())
    *parents, leaf = change.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(ModelConfigError) as info:
        parse_model(json.dumps(config))
    assert str(info.value).startswith(message)


def test_load_model_reads_a_file(tmp_path: Path) -> None:
    model = load_model(write(tmp_path, mutated(lambda c: c.update(version="v1-test"))))
    assert model.version == "v1-test"


def test_model_is_immutable() -> None:
    model = default_model()
    with pytest.raises(AttributeError):
        model.version = "v2"  # type: ignore[misc]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value

    return change


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        del node[leaf]

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("weights.established.engagement", -0.1),
         "weights.established.engagement: must be >= 0"),
        (_set("half_life_days.activity", 0), "half_life_days.activity: must be > 0"),
        (_set("half_life_days.complaints", -3), "half_life_days.complaints: must be > 0"),
        (_set("alerts.exit_probability", 0.5), EXIT_BELOW_ENTER),
        (_set("alerts.exit_probability", 0.6), EXIT_BELOW_ENTER),
        (_set("alerts.enter_probability", 1.5), "alerts.enter_probability: must be < 1"),
        (_set("alerts.surprise", 1), "alerts.surprise: unknown field"),
        (_set("extra", {}), "extra: unknown field"),
        (_delete("alerts.cooldown_hours"), "alerts.cooldown_hours: missing required field"),
        (_delete("growth"), "growth: missing required field"),
        (_set("weights.new.support", "high"), "weights.new.support: Expected `float`, got `str`"),
        (_set("weights.new.support", True), "weights.new.support: Expected `float`, got `bool`"),
        (_set("version", 1), "version: Expected `str`, got `int`"),
        # a version is a key and a label: no blanks, line breaks or pages of text
        (_set("version", "   "), "version: must be 1 to 64 letters, digits"),
        (_set("version", "v5\nv6"), "version: must be 1 to 64 letters, digits"),
        (_set("version", "v5 final"), "version: must be 1 to 64 letters, digits"),
        (_set("version", "v" * 65), "version: must be 1 to 64 letters, digits"),
        (_set("version", "x" * 10_000), "version: must be 1 to 64 letters, digits, '.', '_', "
         "'+' or '-', starting with a letter or digit, not '" + "x" * 40
         + "... (10000 characters)'"),
        (_set("weights.new", {"engagement": 0, "adoption": 0, "milestones": 0, "support": 0,
                              "growth": 0}),
         "weights.new: the component weights must sum to a finite number > 0"),
        # each finite, their sum not: every score 0, every probability 0.999 (review 32)
        (_set("weights.new", {"engagement": 1e308, "adoption": 1e308, "milestones": 1e308,
                              "support": 1e308, "growth": 1e308}),
         "weights.new: the component weights must sum to a finite number > 0"),
        (_delete("milestones.first_referral"), "milestones.first_referral: missing required field"),
        (_set("milestones.clients_50.impact", -1), "milestones.clients_50.impact: must be >= 0"),
        (_set("milestones.clients_50.reward", {"type": "gold"}),
         "milestones.clients_50.reward.type: Invalid enum value 'gold'"),
        (_set("engagement.recency_points", 40), "engagement: the *_points must sum to 100"),
        (_set("engagement.recency_zero_days", 1),
         "engagement.recency_zero_days: must be > recency_full_days"),
        (_set("alerts.recover_drop_points", 20),
         "alerts.recover_drop_points: must be < drop_points"),
        (_set("signals.negative_signal_weights.seat_removed", -1),
         "signals.negative_signal_weights.seat_removed: must be >= 0"),
    ],
)  # fmt: skip
def test_invalid_configs_are_rejected_naming_the_field(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    with pytest.raises(ModelConfigError) as info:
        load_model(write(tmp_path, mutated(change)))
    assert str(info.value).startswith(message)


def test_unknown_milestone_is_rejected() -> None:
    config = mutated(_set("milestones.first_wedding", DEFAULT["milestones"]["first_referral"]))
    with pytest.raises(ModelConfigError, match=r"^milestones.first_wedding: unknown field"):
        parse_model(json.dumps(config))


def test_not_json_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="not valid JSON"):
        parse_model(b"{not json")
    with pytest.raises(ModelConfigError, match="cannot read"):
        load_model(tmp_path / "absent.json")


@pytest.mark.parametrize("where", ["top", "nested"])
def test_a_key_named_twice_is_refused(where: str) -> None:
    """A hand-edited file naming a setting twice: the decoder kept the last one silently,
    so the model served was not the one its author read at the top of the file."""
    text = json.dumps(DEFAULT)
    if where == "top":
        text = text.replace('{"version": ', '{"version": "v9", "version": ', 1)
        named = "'version'"
    else:
        text = text.replace('"weights": {', '"weights": {"new": {}, ', 1)
        named = "'new'"
    assert text != json.dumps(DEFAULT)
    with pytest.raises(ModelConfigError, match=f"names the key {named} twice"):
        parse_model(text)
