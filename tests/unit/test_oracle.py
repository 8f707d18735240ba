"""The oracle of `healthscore evaluate --oracle`: the simulator's true churn probability
and latent health as forecasts, the ceiling any score is measured against."""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import numpy as np
import orjson
import pytest

from healthscore.core.scoring.model import default_model
from healthscore_lab.evaluation.command import add_evaluate_arguments, run_evaluate
from healthscore_lab.evaluation.evaluate import evaluate
from healthscore_lab.evaluation.metrics import DAY, bootstrap_auc, hysteresis_raises
from healthscore_lab.evaluation.oracle import (
    forward_churn_probability,
    oracle_forecasts,
)
from healthscore_lab.evaluation.replay import Backtest
from healthscore_lab.evaluation.report import render_table
from healthscore_lab.simulator.labelled import (
    Population,
    PopulationConfig,
    _Latent,
    reference,
    shifted,
)


@pytest.mark.parametrize("config", [reference(), shifted()], ids=["reference", "shifted"])
def test_the_forecast_is_the_simulators_own_dynamics(config: PopulationConfig) -> None:
    """The vectorized forward run against the simulator's `_Latent.step` itself, from
    a state in a decline and one outside: churn within 30 and 60 days agrees within
    the two Monte Carlo errors."""
    for h0, drift0, mu in ((-0.2, 0.05, 1.0), (0.3, 0.04, 1.2), (0.6, 0.0, 0.9)):
        rng = random.Random(7)
        draws_rng = np.random.default_rng(3)
        draws = 4000
        churned = {30: 0, 60: 0}
        for _ in range(draws):
            latent = _Latent(config, rng, mu)
            latent.h, latent.drift = h0, drift0
            for day in range(1, 61):
                if latent.step():
                    for horizon in churned:
                        churned[horizon] += day <= horizon
                    break
        forecast = forward_churn_probability(
            config,
            np.array([h0]),
            np.array([drift0]),
            np.array([mu]),
            (30, 60),
            draws_rng.random((60, 4000)),
            draws_rng.standard_normal((60, 4000)),
        )
        for horizon, count in churned.items():
            observed = count / draws
            p = float(forecast[horizon][0])
            se = math.sqrt(max(p * (1 - p), 1e-4) / draws)
            assert abs(observed - p) < 4 * se, (h0, drift0, horizon, observed, p)


def test_the_recorded_state_is_aligned_with_the_latent_path(small: Population) -> None:
    for org, path in small.latent.items():
        drift = small.drift[org]
        assert len(drift) == len(path)
        assert [d is None for d in drift] == [h is None for h in path]
        assert all(d is None or d >= 0.0 for d in drift)
        assert org in small.level
    declining = sum(1 for days in small.drift.values() for d in days if d)
    assert declining  # some organizations are in a decline at some point


def test_the_oracle_bounds_the_model_and_is_deterministic(
    small: Population, small_backtest: Backtest
) -> None:
    oracle = oracle_forecasts(small_backtest, small)
    again = oracle_forecasts(small_backtest, small)
    for horizon in (30, 60, 90):
        assert np.array_equal(oracle.probability[horizon], again.probability[horizon])
        assert ((oracle.probability[horizon] >= 0) & (oracle.probability[horizon] <= 1)).all()
    # a longer horizon never forecasts less churn
    assert (oracle.probability[60] >= oracle.probability[30]).all()
    report = evaluate(small_backtest, default_model(), organizations="all", oracle=oracle)
    results = report["results"]
    model, truth = results["model"], results["oracle"]
    assert truth["auc"]["probability"]["30"] >= model["auc"]["churn_probability"]["30"]
    assert truth["brier_30d"] < model["brier_30d"]
    assert truth["brier_skill_vs_base_rate"] > model["brier_skill_vs_base_rate"]
    # fixed figures for this seed (the population is pinned by test_simulator_pinned)
    assert truth["auc"]["probability"]["30"] == pytest.approx(0.9980, abs=1e-4)
    assert truth["auc"]["latent_health"]["30"] == pytest.approx(0.9950, abs=1e-4)
    assert truth["brier_30d"] == pytest.approx(0.0050, abs=1e-4)
    boot = truth["bootstrap_auc_30d"]
    assert boot["organizations"] == 56
    assert 0 < boot["oracle"]["se"] < boot["model"]["se"]
    assert truth["alert_rule"]["training"]["false_alerts_per_100_healthy_per_month"] <= 3.5
    assert "oracle (the truth)" in render_table(report)


def test_hysteresis_holds_persists_and_cools_down() -> None:
    at = np.arange(12, dtype=float) * DAY
    org = np.zeros(12, dtype=np.int64)
    p = np.array([0.1, 0.4, 0.4, 0.4, 0.05, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4])
    # at once, no cooldown: raised on day 1, recovered day 4, raised again day 5
    assert hysteresis_raises(org, at, p, 0.3, 0.15, 0.0) == [(0, 1 * DAY), (0, 5 * DAY)]
    # held two days: day 3, then day 7
    assert hysteresis_raises(org, at, p, 0.3, 0.15, 0.0, 2.0) == [(0, 3 * DAY), (0, 7 * DAY)]
    # a 5-day cooldown after the recovery on day 4: not before day 9
    assert hysteresis_raises(org, at, p, 0.3, 0.15, 5.0, 2.0) == [(0, 3 * DAY), (0, 9 * DAY)]
    # held four days, or at once from 0.35: day 1 and, after the cooldown, day 9;
    # from 0.5 nothing is immediate: held three days from day 5 (the dip resets it)
    assert hysteresis_raises(org, at, p, 0.3, 0.15, 5.0, 4.0, 0.35) == [(0, DAY), (0, 9 * DAY)]
    assert hysteresis_raises(org, at, p, 0.3, 0.15, 5.0, 3.0, 0.5) == [(0, 8 * DAY)]


def test_the_bootstrap_resamples_organizations_and_pairs_the_risks() -> None:
    org = np.repeat(np.arange(40, dtype=np.int64), 5)
    label = np.zeros(200, dtype=bool)
    label[::7] = True
    perfect = label.astype(float)
    noisy = perfect + np.random.default_rng(0).normal(0.0, 0.8, 200)
    draws = bootstrap_auc(org, label, {"perfect": perfect, "noisy": noisy}, 50, seed=1)
    assert (draws["perfect"] == 1.0).all()
    assert 0.5 < float(np.mean(draws["noisy"])) < 1.0
    assert float(np.std(draws["noisy"])) > 0
    again = bootstrap_auc(org, label, {"noisy": noisy}, 50, seed=1)
    assert np.array_equal(again["noisy"], draws["noisy"])


def test_the_oracle_needs_a_simulated_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    (tmp_path / "events.jsonl").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("organization_id,churned_at\n")
    args = parser.parse_args(
        [
            "--events",
            str(tmp_path / "events.jsonl"),
            "--labels",
            str(tmp_path / "labels.csv"),
            "--oracle",
        ]
    )
    assert run_evaluate(args) == 2
    assert "--oracle needs --simulate" in capsys.readouterr().err


def test_the_evaluate_command_reports_the_oracle(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    args = parser.parse_args(
        "--simulate shifted --organizations 40 --days 30 --judge all --oracle "
        f"--oracle-paths 64 --json {tmp_path / 'report.json'}".split()
    )
    assert run_evaluate(args) == 0
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    assert report["results"]["oracle"]["monte_carlo"]["paths"] == 64
    assert report["results"]["oracle"]["auc"]["probability"]["30"] is not None
