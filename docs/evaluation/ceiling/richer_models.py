"""Does more history, or a more flexible model, rank 30-day churners better than v4?

Trains three challengers on ten fresh reference populations (seeds 201-210, every
organization: about 3,000 organizations, ten times v4's training set) and scores
every daily snapshot of populations none of them saw, beside v4:

* v4's own form refitted (the constrained logistic regression `fit` runs, on v4's
  normalized shortfalls, `fit`'s columns) on the ten populations;
* a logistic regression on every state measure, its log, logins per user and the
  activity ratio, and the same measures' changes over 7, 14 and 28 days (the same
  organization's snapshot that many days before);
* a gradient-boosted classifier (scikit-learn's HistGradientBoosting, depth 4,
  400 rounds) on the same columns.

Figures: the 30-day ROC AUC on each test population (the reference seed 11's
held-out organizations, all organizations of the others), the lab's own metric.
Run from the repository root (about 15 minutes on one core; the ten training
populations and six test populations are simulated and replayed first):

    PYTHONPATH=services:services/lab python docs/evaluation/ceiling/richer_models.py
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from healthscore.core.scoring.measure import MEASURES
from healthscore.core.scoring.model import DEFAULT_MODEL_PATH, load_model
from healthscore_lab.evaluation.fit import SIZE_FACTORS, _fitted_columns, constrained_logistic
from healthscore_lab.evaluation.log import from_population
from healthscore_lab.evaluation.metrics import auc, labels_at
from healthscore_lab.evaluation.replay import Backtest, run_backtest
from healthscore_lab.evaluation.split import is_held_out
from healthscore_lab.evaluation.vector import normalized_shortfalls
from healthscore_lab.simulator.labelled import PRESETS, generate_population

DAY = 86400.0
TRAIN = [("reference", seed) for seed in range(201, 211)]
# (setting, seed, judged on the held-out organizations only)
TEST = [
    ("reference", 11, True),
    ("reference", 14, False),
    ("reference", 15, False),
    ("shifted", 777, False),
    ("shifted", 9002, False),
    ("shifted", 9003, False),
]
M = {name: index for index, name in enumerate(MEASURES)}
model = load_model(DEFAULT_MODEL_PATH)
columns = _fitted_columns(SIZE_FACTORS)


def backtest(setting: str, seed: int) -> Backtest:
    population = generate_population(replace(PRESETS[setting](), seed=seed))
    print(f"replaying {setting} {seed}", file=sys.stderr, flush=True)
    return run_backtest(from_population(population, use_profiles=True), model)


def judged(bt: Backtest, held_out_only: bool) -> tuple[np.ndarray, np.ndarray]:
    usable, label = labels_at(bt.snap_org, bt.snap_at, bt.churn, 30, bt.labels_until)
    if held_out_only:
        usable = usable & np.array([is_held_out(org) for org in bt.orgs])[bt.snap_org]
    return usable, label


def measures(bt: Backtest) -> np.ndarray:
    m = bt.snap_measures
    per_user = m[:, M["logins"]] / np.maximum(m[:, M["known_users"]], 1.0)
    expected = m[:, M["activity_expected"]]
    ratio = np.where(
        expected >= 0, (m[:, M["activity_recent"]] + 2) / (np.maximum(expected, 0) + 2), 1.0
    )
    return np.column_stack([m, np.log1p(np.maximum(m, 0.0)), per_user, ratio])


def with_changes(bt: Backtest) -> np.ndarray:
    now = measures(bt)
    day = np.rint(bt.snap_at / DAY).astype(int)
    keys = list(zip(bt.snap_org.tolist(), day.tolist(), strict=True))
    index = {key: i for i, key in enumerate(keys)}
    parts = [now]
    for lag in (7, 14, 28):
        before = np.array([index.get((o, d - lag), -1) for o, d in keys])
        parts.append(np.where((before >= 0)[:, None], now - now[np.maximum(before, 0)], 0.0))
    return np.column_stack(parts)


def main() -> None:
    train = [backtest(*key) for key in TRAIN]
    rows = [judged(bt, False) for bt in train]
    y = np.concatenate([label[usable] for usable, label in rows]).astype(float)
    shortfalls = np.vstack(
        [
            normalized_shortfalls(bt.snap_measures, model)[:, columns][usable]
            for bt, (usable, _label) in zip(train, rows, strict=True)
        ]
    )
    rich = np.vstack(
        [with_changes(bt)[usable] for bt, (usable, _label) in zip(train, rows, strict=True)]
    )
    print(f"training snapshots {len(y)}, positive {int(y.sum())}", file=sys.stderr, flush=True)
    refit = constrained_logistic(shortfalls, y, 1e-3)
    mean, sd = rich.mean(0), rich.std(0) + 1e-9
    linear = LogisticRegression(C=1.0, max_iter=5000).fit((rich - mean) / sd, y)
    boosted = HistGradientBoostingClassifier(
        max_depth=4, learning_rate=0.05, max_iter=400, l2_regularization=1.0, min_samples_leaf=100
    ).fit(rich, y)
    results = []
    for setting, seed, held_out_only in TEST:
        bt = backtest(setting, seed)
        usable, label = judged(bt, held_out_only)
        target = label[usable]
        x = with_changes(bt)
        figures = {
            "population": f"{setting} {seed}" + (" held-out" if held_out_only else " all"),
            "v4": auc(target, bt.snap_probability[usable]),
            "v4_refitted_on_ten_populations": auc(
                target,
                (refit[0] + normalized_shortfalls(bt.snap_measures, model)[:, columns] @ refit[1:])[
                    usable
                ],
            ),
            "logistic_on_measures_and_changes": auc(
                target, linear.decision_function((x - mean) / sd)[usable]
            ),
            "boosted_trees_on_measures_and_changes": auc(
                target, boosted.predict_proba(x)[:, 1][usable]
            ),
        }
        results.append({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()})
        print(json.dumps(results[-1]), flush=True)
    out = Path(__file__).with_name("richer-models.json")
    out.write_text(json.dumps({"training_snapshots": len(y), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
