"""healthscore evaluate and fit: the labelled population, the backtest machinery, the
metrics, and the issue's targets for the shipped model on small simulated populations
it was not fitted on (the full-size figures and their commands are in docs/score-quality.md)."""

from __future__ import annotations

import math
import re
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
import pytest

from healthscore.contracts.enums import AlertKind
from healthscore.core.scoring.model import (
    DEFAULT_MODEL_PATH,
    ScoreModel,
    default_model,
    load_model,
    parse_model,
    v1_model,
    v2_model,
    v3_model,
)
from healthscore_lab.evaluation.command import run_evaluate
from healthscore_lab.evaluation.evaluate import TARGETS, evaluate
from healthscore_lab.evaluation.fit import (
    CANCELLATION_CEILINGS,
    CEILING_TOLERANCE,
    FitSettings,
    _fold_of,
    _log_loss,
    apply_coefficients,
    calibrate,
    choose_cancellation_ceiling,
    constrained_logistic,
    recalibrate,
    snapshot_trend,
)
from healthscore_lab.evaluation.log import (
    EvaluationInputError,
    from_population,
    load_log,
    parse_labels,
    parse_profiles,
)
from healthscore_lab.evaluation.metrics import DAY, alert_figures, auc, brier, labels_at
from healthscore_lab.evaluation.policy import simulate_alerts
from healthscore_lab.evaluation.replay import Backtest, run_backtest
from healthscore_lab.evaluation.split import is_held_out
from healthscore_lab.evaluation.vector import FACTORS, factor_table
from healthscore_lab.simulator.labelled import (
    Population,
    PopulationConfig,
    generate_population,
    iter_jsonl,
    labels_csv,
    profiles_csv,
    reference,
    shifted,
)
from tests.utils.populations import SMALL

# ------------------------------------------------------------------ the population


def test_the_population_is_deterministic_and_labelled(small: Population) -> None:
    again = generate_population(SMALL)
    assert [e.value for e in again.events] == [e.value for e in small.events]
    assert again.churned_at == small.churned_at
    other = generate_population(replace(SMALL, seed=102))
    assert [e.value for e in other.events] != [e.value for e in small.events]
    times = [e.occurred_at for e in small.events]
    assert times == sorted(times)
    # nobody acts after churning; churners exist, and so do organizations that stay
    last: dict[str, float] = {}
    for event in small.events:
        org = orjson.loads(event.value)["organization_id"]
        last[org] = max(last.get(org, 0.0), event.occurred_at)
    churned = {o: at for o, at in small.churned_at.items() if at is not None}
    assert churned and len(churned) < len(small.churned_at)
    assert all(last[o] < at.timestamp() for o, at in churned.items())
    # profiles only for organizations that predate the stream: created before it starts
    assert small.profiles
    assert all(p.created_at.timestamp() < small.stream_start for p in small.profiles.values())


def test_churners_decline_for_weeks_before_they_leave() -> None:
    """The ground truth comes from the latent health, not from any score: the
    churners' health falls over the weeks before churn."""
    population = generate_population(reference(organizations=150, seed=7))
    drops: list[float] = []
    for org, at in population.churned_at.items():
        if at is None:
            continue
        day = int((at.timestamp() - population.stream_start) // DAY)
        path = population.latent[org]
        if not 28 <= day < len(path):
            continue
        four_weeks_before, the_day_before = path[day - 28], path[day - 1]
        if four_weeks_before is not None and the_day_before is not None:
            drops.append(four_weeks_before - the_day_before)
    assert drops and float(np.median(drops)) > 0.5


def test_labels_naming_none_of_the_logs_organizations_are_refused(
    small: Population, tmp_path: Path
) -> None:
    """Labels exported from another system (other ids) made every organization
    retained, and `fit` then said "no training organization churns within the horizon"."""
    (tmp_path / "events.jsonl").write_bytes(b"".join(iter_jsonl(small)))
    others = "\n".join(f"{uuid.uuid4()},2026-01-01T00:00:00Z" for _ in range(3))
    (tmp_path / "labels.csv").write_text(f"organization_id,churned_at\n{others}\n")
    with pytest.raises(EvaluationInputError, match="none of its 3 organizations has a usage"):
        load_log(tmp_path / "events.jsonl", tmp_path / "labels.csv")


def test_the_log_round_trips_through_the_export_files(small: Population, tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_bytes(b"".join(iter_jsonl(small)))
    (tmp_path / "labels.csv").write_text(labels_csv(small))
    (tmp_path / "profiles.csv").write_text(profiles_csv(small))
    loaded = load_log(
        tmp_path / "events.jsonl",
        tmp_path / "labels.csv",
        tmp_path / "profiles.csv",
        labels_until=small.labels_until,
    )
    direct = from_population(small)
    assert loaded.rejected == direct.rejected == 0
    assert [e.event_id for e in loaded.events] == [e.event_id for e in direct.events]
    assert loaded.churned_at == direct.churned_at
    assert loaded.profiles == direct.profiles


def test_profiles_on_their_topic_evaluate_like_the_profiles_file(
    small: Population, small_backtest: Backtest, tmp_path: Path
) -> None:
    """An export with the `organization.profile.v1` records instead of a profiles CSV:
    each profile before its organization's first event, the same backtest."""
    first = min(event.occurred_at for event in small.events)
    start = datetime.fromtimestamp(first - 60, UTC).isoformat()  # before the first event
    lines = [
        orjson.dumps(
            {
                "topic": "organization.profile.v1",
                "value": {
                    "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, profile.organization_id)),
                    "organization_id": str(profile.organization_id),
                    "created_at": profile.created_at.isoformat(),
                    "milestones": {m: at.isoformat() for m, at in profile.milestones.items()},
                    "occurred_at": start,
                },
            }
        )
        + b"\n"
        for profile in small.profiles.values()
    ]
    assert lines
    # and a profile of an organization with no events in the export (a CRM knows more
    # organizations than the window saw): like a profiles CSV's row, it judges no one
    unseen = str(uuid.uuid5(uuid.NAMESPACE_URL, "no events in the export"))
    stray = {"event_id": unseen, "organization_id": unseen, "occurred_at": start}
    lines.append(orjson.dumps({"topic": "organization.profile.v1", "value": stray}) + b"\n")
    (tmp_path / "events.jsonl").write_bytes(b"".join([*lines, *iter_jsonl(small)]))
    (tmp_path / "labels.csv").write_text(labels_csv(small))
    loaded = load_log(tmp_path / "events.jsonl", tmp_path / "labels.csv", None, small.labels_until)
    assert loaded.rejected == 0 and not loaded.profiles
    assert unseen not in loaded.churned_at
    backtest = run_backtest(loaded, default_model())
    assert backtest.orgs == small_backtest.orgs
    assert (backtest.start, backtest.end) == (small_backtest.start, small_backtest.end)
    assert np.array_equal(backtest.snap_score, small_backtest.snap_score)
    assert np.array_equal(backtest.path_score, small_backtest.path_score)
    assert backtest.alerts == small_backtest.alerts
    # without them, the same organizations look new and miss their milestones
    without = run_backtest(from_population(small, use_profiles=False), default_model())
    assert not np.array_equal(without.snap_score, small_backtest.snap_score)


# ------------------------------------------------------------------ the machinery


def test_the_vectorized_score_is_score(small_backtest: Backtest) -> None:
    impacts, _components, scores = factor_table(small_backtest.snap_measures, default_model())
    assert np.array_equal(scores, small_backtest.snap_score)
    assert np.allclose(impacts.sum(axis=1), scores - 100, atol=0.01)


def test_alerts_replayed_from_the_path_are_the_services_alerts(small_backtest: Backtest) -> None:
    simulated = simulate_alerts(small_backtest, default_model())
    replayed = [(a.org, a.at, a.kind, a.trigger) for a in small_backtest.alerts]
    assert sorted(simulated) == sorted(replayed)
    assert any(kind is AlertKind.RISK_RAISED for _o, _t, kind, _tr in simulated)


def test_alerts_replayed_from_the_path_are_the_services_alerts_under_a_decline_gate(
    small: Population,
) -> None:
    """alerts.decline_points reads the 30-day change: the path replay computes it."""
    model = default_model()
    gated = msgspec.structs.replace(
        model, alerts=msgspec.structs.replace(model.alerts, decline_points=25.0)
    )
    bt = run_backtest(from_population(small), gated)
    simulated = simulate_alerts(bt, gated)
    replayed = [(a.org, a.at, a.kind, a.trigger) for a in bt.alerts]
    assert sorted(simulated) == sorted(replayed)
    raised = [t for _o, t, kind, _tr in simulated if kind is AlertKind.RISK_RAISED]
    # the gate held some of v4's raises back on this population
    ungated = [
        t for _o, t, kind, _tr in simulate_alerts(bt, model) if kind is AlertKind.RISK_RAISED
    ]
    assert raised and raised != ungated


def test_metrics_on_hand_made_cases() -> None:
    label = np.array([True, False, True, False])
    assert auc(label, np.array([0.9, 0.1, 0.8, 0.2])) == 1.0
    assert auc(label, np.array([0.1, 0.9, 0.2, 0.8])) == 0.0
    assert brier(label, np.array([1.0, 0.0, 0.5, 0.5])) == pytest.approx(0.125)
    # one churner alerted 20 days ahead, one missed; one false alert on a healthy org
    churn = np.array([40 * DAY, 50 * DAY, math.nan])
    figures = alert_figures(
        [(0, 20 * DAY), (2, 10 * DAY)],
        churn,
        first_seen=np.zeros(3),
        selected=[0, 1, 2],
        first_point=0.0,
        end=60 * DAY,
        labels_until=200 * DAY,
    )
    assert figures.churners == 2 and figures.churners_alerted == 1
    assert figures.median_lead_days == pytest.approx(20.0)
    assert figures.precision == pytest.approx(0.5)
    assert figures.false_alerts_on_healthy == 1
    assert figures.false_alerts_per_100_healthy_per_month == pytest.approx(100 / 2)


def test_labels_count_only_what_is_known_and_alive() -> None:
    org = np.array([0, 0, 1])
    at = np.array([10 * DAY, 40 * DAY, 10 * DAY])
    churn = np.array([30 * DAY, math.nan])
    usable, label = labels_at(org, at, churn, 30, labels_until=45 * DAY)
    assert usable.tolist() == [True, False, True]  # churned already; label unknown
    assert label.tolist() == [True, False, False]


def test_the_constrained_fit_keeps_signs_and_maps_to_a_valid_config() -> None:
    rng = np.random.default_rng(3)
    x = rng.random((4000, 3))
    y = (rng.random(4000) < 1 / (1 + np.exp(-(-3 + 4 * x[:, 0] - 2 * x[:, 1])))).astype(float)
    w = constrained_logistic(x, y, l2=1e-4)
    assert w[1] > 3 and w[2] == 0.0  # the sign the meaning forbids is held at 0
    config = orjson.loads(DEFAULT_MODEL_PATH.read_bytes())
    fitted = apply_coefficients(config, {name: 1.0 for _c, name in FACTORS})
    model = parse_model(orjson.dumps(fitted))  # validates
    assert sum(model.weights.new.as_tuple()) == pytest.approx(1.0)


def test_the_cancellation_ceiling_is_the_strongest_the_training_data_allows(
    small_backtest: Backtest,
) -> None:
    bt = small_backtest
    usable, label = labels_at(bt.snap_org, bt.snap_at, bt.churn, 30, bt.labels_until)
    folds = np.array([_fold_of(bt.orgs[o], 3) for o in bt.snap_org[usable]])
    fitted = orjson.loads(DEFAULT_MODEL_PATH.read_bytes())
    settings = FitSettings()
    chosen, losses = choose_cancellation_ceiling(
        bt, fitted, usable, label[usable].astype(float), folds, settings
    )
    assert list(losses) == [f"{c:g}" for c in CANCELLATION_CEILINGS]
    bound = min(losses.values()) * (1 + CEILING_TOLERANCE)
    assert losses[f"{chosen:g}"] <= bound
    assert all(losses[f"{c:g}"] > bound for c in CANCELLATION_CEILINGS if c < chosen)
    assert fitted == orjson.loads(DEFAULT_MODEL_PATH.read_bytes())  # the candidate is left as is


def test_recalibration_fits_only_the_churn_calibration_and_the_alert_settings() -> None:
    # SMALL's training organizations have no churn within 30 days of a snapshot
    log = from_population(generate_population(replace(SMALL, organizations=80, days=50)))
    config = orjson.loads(DEFAULT_MODEL_PATH.read_bytes())
    # one alert setting besides the cooldowns: the search itself is fit's, tested there
    one = FitSettings(enter_probabilities=(0.3,), persist_hours=(96.0,), drop_points=(100.0,))
    result = recalibrate(log, default_model(), config, "v4r", one)
    fitted = result.config
    changed = {key for key in set(config) | set(fitted) if config.get(key) != fitted.get(key)}
    assert "churn" in changed
    assert changed <= {"churn", "alerts", "version", "evaluation"}  # weights, shapes, ceilings kept
    assert fitted["version"] == "v4r" and result.model.version == "v4r"
    assert list(fitted["evaluation"]) == [
        "source",
        "held_out_organizations",
        "recalibrated_from",
        "training_alert_settings",
        "held_out",
        "current_model_held_out",
    ]
    assert fitted["evaluation"]["source"] == log.source
    assert fitted["evaluation"]["recalibrated_from"] == "v4"
    assert fitted["evaluation"]["current_model_held_out"].keys() == {"v4"}
    churn = fitted["churn"]
    assert churn["score_coefficient"] >= 0.0 and churn["trend_coefficient"] >= 0.0
    # the calibration is the likelihood's optimum on the training organizations' snapshots
    bt = run_backtest(log, default_model())
    usable, label = labels_at(bt.snap_org, bt.snap_at, bt.churn, 30, bt.labels_until)
    held = np.array([is_held_out(org) for org in bt.orgs])
    rows = usable & ~held[bt.snap_org]
    scores, trend, y = bt.snap_score, snapshot_trend(bt, bt.snap_score), label.astype(float)

    def loss(intercept: float) -> float:
        z = (
            intercept
            - churn["score_coefficient"] * scores[rows] / 100.0
            - churn["trend_coefficient"] * trend[rows] / 100.0
        )
        return _log_loss(y[rows], z)

    assert churn == calibrate(scores[rows], trend[rows], y[rows], FitSettings().l2)
    assert loss(churn["intercept"]) < loss(churn["intercept"] + 0.1)
    assert loss(churn["intercept"]) < loss(churn["intercept"] - 0.1)


# ------------------------------------------------------------------ the targets


# evaluate()'s report: a JSON document, typed as evaluate() declares it
Report = dict[str, Any]


def _report(
    config_overrides: dict[str, int],
    maker: Callable[..., PopulationConfig] = reference,
    model: ScoreModel | None = None,
) -> Report:
    population = generate_population(maker(**config_overrides))
    model = model or default_model()
    bt = run_backtest(from_population(population), model)
    return evaluate(bt, model, organizations="all")


SMALL_REFERENCE = {"organizations": 160, "days": 75, "seed": 515}
SMALL_SHIFTED = {"organizations": 160, "days": 90, "seed": 616}


@pytest.fixture(scope="module")
def reference_report() -> Report:
    """A reference-setting population the model never saw (another seed), all judged."""
    return _report(SMALL_REFERENCE)


@pytest.fixture(scope="module")
def shifted_report() -> Report:
    return _report(SMALL_SHIFTED, shifted)


@pytest.fixture(scope="module")
def shifted_v3_report() -> Report:
    return _report(SMALL_SHIFTED, shifted, v3_model())


# The targets, each checked on both small populations. Their seeds were fixed
# before the figures were seen (under v2); one target is missed on them by v4 (v3 missed
# the shifted one's false alerts too: 5.12, v4 4.70): a strict xfail, so a model that
# meets it turns the run red until the mark goes.
MISSED = {
    ("reference", "auc_30d"): "0.894 on this 160-organization population (v3: 0.883; v4 "
    "0.936 on the full-size held-out organizations, 0.93-0.94 on other full-size seeds)",
}


def _target_cases() -> list[pytest.ParameterSet]:
    cases = []
    for which in ("reference", "shifted"):
        for target in (
            "auc_30d",
            "brier_skill_vs_base_rate",
            "brier_below_baselines",
            "recall",
            "median_lead_days",
            "false_alerts_per_100_healthy_per_month",
        ):
            reason = MISSED.get((which, target))
            marks = (
                [pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)]
                if reason
                else []
            )
            cases.append(pytest.param(which, target, marks=marks, id=f"{which}-{target}"))
    return cases


@pytest.mark.parametrize(("which", "target"), _target_cases())
def test_the_shipped_model_meets_the_target(
    which: str,
    target: str,
    reference_report: Report,
    shifted_report: Report,
) -> None:
    report = reference_report if which == "reference" else shifted_report
    results = report["results"]
    model = results["model"]
    alerts = model["alerts"]
    if target == "auc_30d":
        assert model["auc"]["churn_probability"]["30"] >= TARGETS["auc_30d"]
        assert model["auc"]["score"]["30"] >= TARGETS["auc_30d"]
    elif target == "brier_skill_vs_base_rate":
        assert model["brier_skill_vs_base_rate"] >= TARGETS["brier_skill_vs_base_rate"]
    elif target == "brier_below_baselines":
        assert model["brier_30d"] < results["days_since_last_activity"]["brier_30d"]
        assert model["brier_30d"] < results["raw_aggregates_logistic"]["brier_30d"]
    elif target == "recall":
        assert alerts["recall"] >= TARGETS["recall"]
    elif target == "median_lead_days":
        assert alerts["median_lead_days"] >= TARGETS["median_lead_days"]
    else:
        assert (
            alerts["false_alerts_per_100_healthy_per_month"]
            <= TARGETS["false_alerts_per_100_healthy_per_month"]
        )


def test_v4_ranks_and_calibrates_better_than_v3_on_both_small_populations(
    reference_report: Report,
    shifted_report: Report,
    shifted_v3_report: Report,
) -> None:
    """What v4 changed v3 for (its changelog): factors measured against the organization
    itself, which transfer to a population that uses the product less."""
    v3_reference = _report(SMALL_REFERENCE, model=v3_model())["results"]["model"]
    for v4, v3 in (
        (reference_report["results"]["model"], v3_reference),
        (shifted_report["results"]["model"], shifted_v3_report["results"]["model"]),
    ):
        assert v4["auc"]["churn_probability"]["30"] > v3["auc"]["churn_probability"]["30"]
        assert v4["brier_30d"] < v3["brier_30d"]
    false_v4 = shifted_report["results"]["model"]["alerts"]
    false_v3 = shifted_v3_report["results"]["model"]["alerts"]
    assert (
        false_v4["false_alerts_per_100_healthy_per_month"]
        < false_v3["false_alerts_per_100_healthy_per_month"]
    )


def test_v3_alerts_less_and_is_better_calibrated_than_v2_on_the_shifted_setting(
    shifted_v3_report: Report,
) -> None:
    """What v3 changed v2 for (its changelog), on the small shifted population."""
    v3 = shifted_v3_report["results"]["model"]
    v2 = _report(SMALL_SHIFTED, shifted, v2_model())["results"]["model"]
    assert v3["brier_30d"] < v2["brier_30d"]
    assert v3["auc"]["churn_probability"]["30"] > v2["auc"]["churn_probability"]["30"]
    false_v3 = v3["alerts"]["false_alerts_per_100_healthy_per_month"]
    assert false_v3 < v2["alerts"]["false_alerts_per_100_healthy_per_month"]


def test_v2_does_better_than_v1_on_the_same_log(small: Population) -> None:
    log = from_population(small)
    v1, v2 = v1_model(), v2_model()
    old = evaluate(run_backtest(log, v1), v1, organizations="all")
    new = evaluate(run_backtest(log, v2), v2, organizations="all")
    assert (
        new["results"]["model"]["auc"]["churn_probability"]["30"]
        > old["results"]["model"]["auc"]["churn_probability"]["30"]
    )
    assert new["results"]["model"]["brier_30d"] < old["results"]["model"]["brier_30d"]
    # closing an escalation or cancellation request no longer jumps the score back
    if new["closures"]["count"] and old["closures"]["count"]:
        assert new["closures"]["max_jump"] < old["closures"]["max_jump"]


def test_the_evaluate_command_writes_json_and_plots(tmp_path: Path) -> None:
    simulated = ["--simulate", "--organizations", "40", "--days", "30"]
    outputs = ["--json", str(tmp_path / "report.json"), "--plots", str(tmp_path / "plots")]
    assert _evaluate([*simulated, *outputs]) == 0
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    assert set(report["results"]) >= {
        "model",
        "days_since_last_activity",
        "raw_aggregates_logistic",
    }
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "reliability.png",
        "score_distributions.png",
        "lead_times.png",
    }


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        (
            "--exclude few_logins_per_user --exclude no_such_factor",
            "unknown factor(s) no_such_factor",
        ),
        ("--calibration-only --exclude inactivity", "--calibration-only keeps every weight"),
        ("--calibration-only --include-size-factors", "--calibration-only keeps every weight"),
        # a shipped version: the shipped file beside the current model was overwritten
        ("--version v3", "--version v3 is the version of a model shipped with healthscore"),
        ("--version v4 --calibration-only", "--version v4 is the version of a model shipped"),
        ("--version v5.final!", "--version: must be 1 to 64 letters, digits"),
        ("--seed 3 --organizations 4", "no training organization churns"),
        # one training churner: two of the three folds had no log loss (a traceback)
        (
            "--organizations 12 --days 45",
            "6 training organizations, 1 of them churning within 30 days, and each of the 3 "
            "cross-validation folds needs one (churners by fold: 0, 1, 0)",
        ),
    ],
    ids=[
        "unknown-factor",
        "calibration-only-excluding",
        "calibration-only-size-factors",
        "a-shipped-version",
        "the-current-version",
        "a-version-that-is-no-token",
        "nothing-to-fit",
        "a-fold-without-a-churner",
    ],
)
def test_the_fit_command_refuses_what_it_cannot_do(
    extra: str, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from healthscore_lab.evaluation.command import add_fit_arguments, run_fit

    parser = argparse.ArgumentParser()
    add_fit_arguments(parser)
    # `extra` comes last: of a repeated option, the last wins
    arguments = f"--simulate --organizations 10 --days 20 --version vX {extra}"
    assert run_fit(parser.parse_args(arguments.split())) == 2
    assert error in capsys.readouterr().err


def test_fit_refuses_a_model_too_few_held_out_organizations_judge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Five held-out organizations rank and calibrate anything "no worse" than the
    current model: the recalibrated model was written, judged on one or two churners."""
    import argparse

    from healthscore_lab.evaluation.command import add_fit_arguments, run_fit

    parser = argparse.ArgumentParser()
    add_fit_arguments(parser)
    out = tmp_path / "health_model.vX.json"
    arguments = "--simulate --organizations 10 --days 60 --calibration-only --version vX"
    assert run_fit(parser.parse_args([*arguments.split(), "--out", str(out)])) == 1
    refused = capsys.readouterr().out.splitlines()[-1]
    assert refused.startswith("refused: too few held-out organizations to judge it by: ")
    assert "(at least 10 and 10: a larger or longer labelled log)" in refused
    assert refused.endswith("(--force writes it anyway)")
    assert not out.exists()


def test_fit_refuses_a_log_without_usage_events(
    small: Population, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An export of the support topic alone (the usage topic forgotten) was fitted and
    written: it ranked better than v4 on that same log, with no usage to learn from."""
    import argparse

    from healthscore_lab.evaluation.command import add_fit_arguments, run_fit

    support_only = [line for line in iter_jsonl(small) if b'"product.usage.v1"' not in line]
    assert support_only and len(support_only) < len(list(iter_jsonl(small)))
    (tmp_path / "events.jsonl").write_bytes(b"".join(support_only))
    (tmp_path / "labels.csv").write_text(labels_csv(small))
    parser = argparse.ArgumentParser()
    add_fit_arguments(parser)
    arguments = f"--events {tmp_path / 'events.jsonl'} --labels {tmp_path / 'labels.csv'}"
    out = tmp_path / "health_model.vX.json"
    assert (
        run_fit(parser.parse_args([*arguments.split(), "--version", "vX", "--out", str(out)])) == 2
    )
    assert "no product usage event" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", ["fit", "fit --calibration-only"])
def test_fit_refuses_labels_in_which_every_organization_churns(
    small: Population, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """Labels marking every organization churned (a contract end date exported for all)
    were fitted, and the model written whenever the current one ranked as badly on them;
    on a short log the refusal said "no training organization churns within 30 days",
    of a log in which every one does. Now refused first, naming the labels."""
    import argparse

    from healthscore_lab.evaluation.command import add_fit_arguments, run_fit

    (tmp_path / "events.jsonl").write_bytes(b"".join(iter_jsonl(small)))
    last = max(at for at in small.churned_at.values() if at is not None)
    every = {org: at or last for org, at in small.churned_at.items()}
    assert any(at is None for at in small.churned_at.values())
    lines = [f"{org},{at.isoformat()}" for org, at in every.items()]
    (tmp_path / "labels.csv").write_text("organization_id,churned_at\n" + "\n".join(lines))
    parser = argparse.ArgumentParser()
    add_fit_arguments(parser)
    arguments = f"--events {tmp_path / 'events.jsonl'} --labels {tmp_path / 'labels.csv'}"
    flags = command.split()[1:]
    out = tmp_path / "health_model.vX.json"
    args = [*arguments.split(), *flags, "--version", "vX", "--out", str(out)]
    assert run_fit(parser.parse_args(args)) == 2
    error = capsys.readouterr().err
    assert f"every one of its {len(every)} organizations churns in the labels" in error
    assert not out.exists()


def test_fit_writes_the_new_version_beside_its_model_and_never_into_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --model the current model is the shipped one, in the installed package:
    the new version went beside it, where it was taken for a shipped model."""
    import argparse

    from healthscore_lab.evaluation.command import add_fit_arguments, run_fit

    def run(arguments: str) -> int:
        parser = argparse.ArgumentParser()
        add_fit_arguments(parser)
        return run_fit(parser.parse_args(arguments.split()))

    quick = "--simulate --organizations 10 --days 60 --calibration-only --force"
    monkeypatch.chdir(tmp_path)
    assert run(f"{quick} --version v4-here") == 0
    assert load_model(tmp_path / "health_model.v4-here.json").version == "v4-here"
    assert not (DEFAULT_MODEL_PATH.parent / "health_model.v4-here.json").exists()
    # beside --model when given; never over it
    ours = tmp_path / "models" / "health_model.v4-ours.json"
    ours.parent.mkdir()
    ours.write_bytes(
        DEFAULT_MODEL_PATH.read_bytes().replace(b'"version": "v4"', b'"version": "v4-ours"')
    )
    assert run(f"{quick} --model {ours} --version v4-ours2") == 0
    assert load_model(ours.with_name("health_model.v4-ours2.json")).version == "v4-ours2"
    capsys.readouterr()
    assert run(f"{quick} --model {ours} --version v4-ours") == 2
    assert "--version v4-ours would replace the current model v4-ours" in capsys.readouterr().err


def test_the_label_and_profile_files_read_as_the_import_reads_them() -> None:
    """`evaluate` read them with a parser of its own: an upper-case id never matched the
    log's organizations, a second label of one organization silently replaced the first,
    rows of one organization's profile kept the last instead of the earliest times."""
    org = uuid.uuid4()
    labels = parse_labels(f"organization_id,churned_at\n{str(org).upper()},\n")
    assert labels == {str(org): None}
    with pytest.raises(EvaluationInputError, match="listed twice"):
        parse_labels(f"organization_id,churned_at\n{org},\n{org},2026-01-01T00:00:00Z\n")
    profiles = parse_profiles(
        "organization_id,created_at,milestones\n"
        f"{org},2024-05-01T00:00:00Z,\n{org},2024-04-01T00:00:00Z,\n{org},2024-06-01T00:00:00Z,\n"
    )
    assert profiles[str(org)].created_at == datetime(2024, 4, 1, tzinfo=UTC).timestamp()
    # lines ending in CR alone (Excel's "CSV (Macintosh)"): read too, in the file's order
    other = uuid.uuid4()
    mac = f"organization_id,churned_at\r{other},\r{org},2026-01-01T00:00:00Z\r"
    assert list(parse_labels(mac)) == [str(other), str(org)]


def test_an_export_with_repeats_counts_each_event_once(tmp_path: Path) -> None:
    """An export of the input topics holds what producers sent twice (at-least-once
    delivery), and a reused id with another payload. The service counts a repeat once
    and dead-letters the conflict (`event_id_conflict`); `evaluate`, `fit` and `adapt`
    applied every line, so an organization's repeated events counted twice in the
    scores they judge and fit. The first of an id, in the order the service applies
    the log (event time), is kept; a repeat is counted as one, a conflict as rejected."""
    org = str(uuid.uuid4())
    at = datetime(2026, 3, 1, 9, tzinfo=UTC)

    def usage(n: int, **changes: Any) -> dict[str, Any]:
        return {
            "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"export-repeat-{n}")),
            "organization_id": org,
            "type": "login",
            "occurred_at": datetime.fromtimestamp(at.timestamp() + n * 3600, UTC).isoformat(),
            **changes,
        }

    def line(value: dict[str, Any]) -> bytes:
        return orjson.dumps({"topic": "product.usage.v1", "value": value}) + b"\n"

    first = usage(0)
    resent = {key: first[key] for key in reversed(list(first))}  # re-serialized
    lines = [line(first), line(usage(1)), line(resent), line(usage(2)), line(usage(0, quantity=5))]
    (tmp_path / "events.jsonl").write_bytes(b"".join(lines))
    loaded = load_log(tmp_path / "events.jsonl", None)
    assert [str(e.event_id) for e in loaded.events] == [usage(n)["event_id"] for n in range(3)]
    assert (loaded.duplicates, loaded.rejected) == (1, 1)
    assert [getattr(e, "quantity", None) for e in loaded.events] == [1, 1, 1]
    backtest = run_backtest(loaded, default_model(), warmup_days=0)
    assert len(backtest.path_at) == 3  # each login scored once


def test_an_export_is_read_with_a_byte_order_mark_or_refused_saying_why(tmp_path: Path) -> None:
    """A JSON-lines export saved by a Windows tool starts with a byte-order mark, and
    one written by a broken exporter may hold a byte that is not UTF-8 or a number no
    double holds. Each was refused as `events.jsonl:N: expected {"topic": ...,
    "value": {...}}`, about a line of exactly that shape: the mark is read past now,
    and a line that is not JSON is refused with the parser's reason and column."""
    org = str(uuid.uuid4())
    value = {
        "event_id": str(uuid.uuid4()),
        "organization_id": org,
        "type": "login",
        "occurred_at": "2026-03-01T09:00:00Z",
    }
    line = orjson.dumps({"topic": "product.usage.v1", "value": value}) + b"\n"
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\xef\xbb\xbf" + line)
    assert [str(e.organization_id) for e in load_log(events, None).events] == [org]
    # a record of an input topic whose value is not JSON is one the service dead-letters:
    # rejected, counted, its reason kept (before, the whole export was refused: an input
    # topic keeps such a record forever)
    events.write_bytes(line + line.replace(b"login", b"log\xe9n"))
    loaded = load_log(events, None)
    assert loaded.rejected == 1 and len(loaded.events) == 1
    assert re.fullmatch(
        r".*events\.jsonl:2: the value is not JSON \(byte 0xe9 at column \d+ is not UTF-8.*",
        loaded.rejections[0],
    )
    events.write_bytes(line + b'{"topic": "product.usage.v1", "value": {"quantity": 1e999}}\n')
    (infinite,) = load_log(events, None).rejections
    assert infinite.startswith(f"{events}:2: the value is not JSON (column 53: number is infinity")
    events.write_bytes(line + b'{"topic":"product.usage.v1","value":}\n')  # a tombstone
    assert load_log(events, None).rejected == 1
    # a line that is no export's wrapper is still refused, saying why
    events.write_bytes(line + b"log\xe9n\n")
    with pytest.raises(
        EvaluationInputError, match=r"events\.jsonl:2: byte 0xe9 at column \d+ is not UTF-8"
    ):
        load_log(events, None)
    events.write_bytes(b'{"topic": "product.usage.v1"}\n')
    with pytest.raises(EvaluationInputError, match=r'events\.jsonl:1: expected \{"topic"'):
        load_log(events, None)


# ------------------------------------------------------------------ hostile exports (review 32)


def _export(population: Population, tmp_path: Path, extra: list[bytes] | None = None) -> Path:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(iter_jsonl(population)) + b"".join(extra or []))
    (tmp_path / "labels.csv").write_text(labels_csv(population))
    return events


def _login(occurred_at: str, **wrapper: Any) -> bytes:
    value = {
        "event_id": str(uuid.uuid4()),
        "organization_id": str(uuid.uuid4()),
        "type": "login",
        "occurred_at": occurred_at,
    }
    return orjson.dumps({"topic": "product.usage.v1", **wrapper, "value": value}) + b"\n"


@pytest.mark.parametrize("when", ["2015-01-01T00:00:00Z", "2026-01-01T00:00:00Z"])
def test_an_export_with_a_stray_dated_event_is_refused_naming_it(
    small: Population, tmp_path: Path, when: str
) -> None:
    """One login a year off (a producer's clock) stretched every organization's as-of
    points: ROC AUC 0.934 -> 0.291 (or 0.452, and the false-alert target "met"), exit
    0, no word. It is refused, named, unless the export carries the records' timestamps
    (then the service's own future-time rule rejects a future-dated one)."""
    events = _export(small, tmp_path, [_login(when)])
    with pytest.raises(EvaluationInputError, match=r"1 events lie more than 30 days outside"):
        load_log(events, tmp_path / "labels.csv")
    # real ones (a pilot months before the bulk) are kept when asked (review 32d)
    kept = load_log(events, tmp_path / "labels.csv", keep_stray_events=True)
    assert len(kept.events) == len(from_population(small).events) + 1
    clean = load_log(_export(small, tmp_path), tmp_path / "labels.csv")
    assert clean.rejected == 0


def test_an_exports_record_timestamp_judges_future_events_as_the_service_did(
    small: Population, tmp_path: Path
) -> None:
    """With the record's timestamp (`kcat -f '{..."timestamp":%T,...}'`), an event dated
    more than five minutes after its record is rejected as `future_timestamp`, as the
    service dead-lettered it; without one it is judged against its own time."""
    at = datetime.fromtimestamp(small.labels_until - 100 * DAY, UTC)
    sent_ms = int(at.timestamp() * 1000) - 3600_000  # produced an hour before its time
    ahead = _login(at.isoformat(), timestamp=sent_ms)
    loaded = load_log(_export(small, tmp_path, [ahead]), tmp_path / "labels.csv")
    assert loaded.rejected == 1
    assert "future_timestamp" in loaded.rejections[0]
    plain = _login(at.isoformat())
    assert load_log(_export(small, tmp_path, [plain]), tmp_path / "labels.csv").rejected == 0
    with pytest.raises(EvaluationInputError, match="timestamp must be the record's"):
        load_log(
            _export(small, tmp_path, [_login(at.isoformat(), timestamp="yesterday")]),
            tmp_path / "labels.csv",
        )


def test_a_churn_after_the_labels_horizon_is_neither_a_hit_nor_a_churner() -> None:
    """A raise on day 10, a churn on day 40, the log ending on day 20 and labels known
    until day 30: precision counted the episode true (the churn was in the labels
    file) while the false-alert rate counted its organization healthy; the churn is not
    known, so the episode's outcome is not either."""

    def known_until(day: float) -> Any:
        return alert_figures(
            [(0, 10 * DAY)],
            np.array([40 * DAY]),
            first_seen=np.zeros(1),
            selected=[0],
            first_point=0.0,
            end=20 * DAY,
            labels_until=day * DAY,
        )

    figures = known_until(30)
    assert (figures.episodes, figures.episodes_known, figures.precision) == (1, 0, None)
    assert figures.churners == 0  # nor a churner to recall
    assert figures.healthy_organizations == 1 and figures.false_alerts_on_healthy == 1
    # once the churn is known, a hit and no false alert
    known = known_until(45)
    assert (known.true_episodes, known.precision, known.churners_alerted) == (1, 1.0, 1)
    assert known.false_alerts_on_healthy == 0


def _evaluate(arguments: list[str]) -> int:
    import argparse

    from healthscore_lab.evaluation.command import add_evaluate_arguments

    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return run_evaluate(parser.parse_args(arguments))


def test_the_written_log_evaluates_as_the_simulation_did(tmp_path: Path) -> None:
    """`--write-log` writes the labels' horizon beside the files: evaluated with it, the
    files give the simulation's figures. Before, the default horizon (last event + 30
    days) cut the labels file's later churns and judged them both ways: 5.60 false
    alerts against 4.75 on one population."""
    simulated = ["--simulate", "--organizations", "40", "--days", "30", "--judge", "all"]
    log = tmp_path / "log"
    assert _evaluate([*simulated, "--write-log", str(log), "--json", str(tmp_path / "a")]) == 0
    until = (log / "labels_until.txt").read_text().strip()
    files = ["--events", str(log / "events.jsonl"), "--labels", str(log / "labels.csv")]
    files += ["--profiles", str(log / "profiles.csv"), "--judge", "all"]
    assert _evaluate([*files, "--labels-until", until, "--json", str(tmp_path / "b")]) == 0
    a, b = (orjson.loads((tmp_path / name).read_bytes()) for name in "ab")
    assert a["organizations"] == b["organizations"]
    # the same figures (the baselines' unrounded mean forecasts to the last bits: their
    # rows come in another order)
    assert _rounded(a["results"]) == _rounded(b["results"])


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["--labels-until", "2025-02-01T00:00:00"], "--labels-until needs an offset"),
        (["--labels-until", "2999-01-01T00:00:00Z"], "is after now"),
        (["--labels-until", "2025-01-20T00:00:00Z"], "nothing to judge"),
        (["--write-log", "elsewhere"], "--write-log goes with --simulate"),
    ],
    ids=["no-offset", "future", "before-any-known-label", "write-log-with-events"],
)
def test_evaluate_refuses_an_export_it_cannot_judge_saying_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], error: str
) -> None:
    """A labels horizon before any as-of point's 30 days was a TypeError traceback."""
    log = tmp_path / "log"
    simulated = ["--simulate", "--organizations", "40", "--days", "30", "--write-log", str(log)]
    assert _evaluate([*simulated, "--json", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    files = ["--events", str(log / "events.jsonl"), "--labels", str(log / "labels.csv")]
    assert _evaluate([*files, *arguments]) == 2
    assert error in capsys.readouterr().err


def test_labels_without_a_churner_judge_without_a_skill_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every organization retained (a young deployment's first labels): the base rate
    is never wrong, so there is no Brier skill to measure. Before: ZeroDivisionError."""
    log = tmp_path / "log"
    simulated = ["--simulate", "--organizations", "40", "--days", "30", "--write-log", str(log)]
    assert _evaluate([*simulated, "--json", str(tmp_path / "a")]) == 0
    rows = (log / "labels.csv").read_text().splitlines()
    retained = [rows[0], *(row.split(",")[0] + "," for row in rows[1:])]
    (log / "retained.csv").write_text("\n".join(retained) + "\n")
    until = (log / "labels_until.txt").read_text().strip()
    files = ["--events", str(log / "events.jsonl"), "--labels", str(log / "retained.csv")]
    out = tmp_path / "report.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's mean of no churner warned on stderr
        judged = [*files, "--labels-until", until, "--judge", "all", "--json", str(out)]
        assert _evaluate(judged) == 0
    report = orjson.loads(out.read_bytes())
    assert report["results"]["model"]["brier_skill_vs_base_rate"] is None
    assert report["targets"]["brier_skill_vs_base_rate"]["met"] is None


def test_the_candidates_episodes_are_compared_on_the_organizations_judged(
    small: Population, small_backtest: Backtest
) -> None:
    """Both reports beside the comparison judge the held-out organizations; the episode
    comparison counted every organization, so a fitted candidate's own training
    organizations counted as its gains (review 32)."""
    from healthscore_lab.evaluation.compare import compare_episodes

    candidate = run_backtest(from_population(small), v2_model())
    every = compare_episodes(small_backtest, candidate)
    held = compare_episodes(small_backtest, candidate, organizations="held_out")
    assert any(not is_held_out(org) for org in every["per_organization"])
    assert held["per_organization"]
    assert all(is_held_out(org) for org in held["per_organization"])
    assert held["per_organization"] == {
        org: changes for org, changes in every["per_organization"].items() if is_held_out(org)
    }


def test_the_default_labels_horizon_is_never_after_now(small: Population, tmp_path: Path) -> None:
    """A churn dated ahead (a notice of a later end) pushed the default horizon past
    now, the value --labels-until refuses: episodes counted known whose outcome nobody
    knows yet (review 32d: precision 1.0 -> 0.357 on one population)."""
    events = _export(small, tmp_path)
    rows = (tmp_path / "labels.csv").read_text().splitlines()
    org = rows[1].split(",")[0]
    rows[1] = f"{org},2999-01-01T00:00:00Z"
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    before = time.time()
    log = load_log(events, tmp_path / "labels.csv")
    assert before <= log.labels_until <= time.time()


def test_labels_and_events_that_disagree_are_said_and_judged_on_what_is_seen(
    small: Population, tmp_path: Path
) -> None:
    """A labelled organization without events counted as a churner no alert saw (recall
    0.786 -> 0.458 with 20 of them) and passed fit's gate of enough held-out ones; one
    whose churn came before its first event was dropped from every figure while counted
    as judged; one with events and no label row was taken as retained without a word
    (review 37a). The first two are left out, all three said."""
    (tmp_path / "events.jsonl").write_bytes(b"".join(iter_jsonl(small)))
    direct = from_population(small)
    first_seen: dict[str, float] = {}
    for event in direct.events:
        first_seen.setdefault(str(event.organization_id), event.occurred_at.timestamp())
    churners = sorted(org for org, at in direct.churned_at.items() if at and org in first_seen)
    retained = sorted(org for org, at in direct.churned_at.items() if not at and org in first_seen)
    ghosts = sorted(str(uuid.uuid4()) for _ in range(2))
    unlabelled, earlier = churners[0], retained[0]
    rows = ["organization_id,churned_at"]
    for org, at in direct.churned_at.items():
        if org == unlabelled:
            continue
        if org == earlier:  # a churn of an earlier contract
            at = first_seen[org] - 30 * DAY
        rows.append(f"{org},{datetime.fromtimestamp(at, UTC).isoformat() if at else ''}")
    rows += [f"{ghost},2025-02-01T00:00:00Z" for ghost in ghosts]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    loaded = load_log(tmp_path / "events.jsonl", tmp_path / "labels.csv", None, small.labels_until)
    never_seen = sorted(org for org in direct.churned_at if org not in first_seen)
    assert loaded.mismatches == {
        "labelled_without_events": sorted([*ghosts, *never_seen]),
        "churned_before_first_event": [earlier],
        "events_without_label": [unlabelled],
    }
    assert set(loaded.churned_at) == set(first_seen) - {earlier}
    assert loaded.churned_at[unlabelled] is None  # taken as retained, and said
    assert all(str(event.organization_id) != earlier for event in loaded.events)
    backtest = run_backtest(loaded, default_model())
    assert set(backtest.orgs) == set(first_seen) - {earlier}


def test_an_export_of_a_deployments_own_topic_names_is_read_as_the_service_reads_them(
    small: Population, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kcat -f '%t'` writes the topic's real name: a deployment whose service reads
    `USAGE_TOPIC=acme.usage` had its export refused as an unknown topic (review 37a M2)."""
    lines = b"".join(iter_jsonl(small)).replace(b'"product.usage.v1"', b'"acme.usage"')
    (tmp_path / "events.jsonl").write_bytes(lines)
    with pytest.raises(EvaluationInputError, match=r"unknown topic 'acme\.usage' .*USAGE_TOPIC"):
        load_log(tmp_path / "events.jsonl", None)
    monkeypatch.setenv("USAGE_TOPIC", "acme.usage")
    loaded = load_log(tmp_path / "events.jsonl", None, None, small.labels_until)
    direct = from_population(small)
    assert [e.event_id for e in loaded.events] == [e.event_id for e in direct.events]


def test_a_simulation_running_past_today_is_refused_saying_how_long_it_may_be(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # its events after now were rejected as future, and its labels_until.txt was
    # refused by --labels-until (review 37a L5)
    assert _evaluate(["--simulate", "--organizations", "10", "--days", "5000"]) == 2
    error = capsys.readouterr().err
    assert re.search(r"--days 5000: the simulation starts 2025-01-06 .* --days \d+ at most", error)
