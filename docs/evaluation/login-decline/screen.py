"""Screen of login_decline on a population's TRAINING organizations only (issue 13, v5).

For each login-baseline half-life, replays the population (reference, seed 11, unless
the first argument is `shifted`: seed 2027) under
v4 with that half-life (v4 never reads the baseline: its scores are v4's), then does
what `healthscore fit` does on the training organizations: the shape search by
grouped 3-fold cross-validation and the constrained logistic regression, with and
without `few_logins_per_user`. Prints the cross-validated log loss and
login_decline's coefficient. Held-out organizations are not read.

    PYTHONPATH=services:services/lab python docs/evaluation/login-decline/screen.py \
        [reference|shifted] [HALF_LIFE_DAYS ...]
"""

from __future__ import annotations

import sys

import numpy as np
import orjson

from healthscore.core.scoring.model import DEFAULT_MODEL_PATH, parse_model
from healthscore_lab.evaluation.fit import (
    SIZE_FACTORS,
    FitSettings,
    _copy,
    _fold_of,
    every_factor_on,
    fit_coefficients,
    search_shapes,
)
from healthscore_lab.evaluation.log import from_population
from healthscore_lab.evaluation.metrics import labels_at
from healthscore_lab.evaluation.replay import run_backtest
from healthscore_lab.evaluation.split import is_held_out
from healthscore_lab.simulator.labelled import PRESETS, generate_population


def main() -> None:
    args = sys.argv[1:]
    preset = args.pop(0) if args and args[0] in PRESETS else "reference"
    log = from_population(generate_population(PRESETS[preset]()))
    base_config = orjson.loads(DEFAULT_MODEL_PATH.read_bytes())
    for half_life in [float(a) for a in args] or [30.0, 60.0, 120.0]:
        config = _copy(base_config)
        config["half_life_days"]["logins_baseline"] = half_life
        current = parse_model(orjson.dumps(config))
        bt = run_backtest(log, current, warmup_days=14.0)
        held = np.array([is_held_out(org) for org in bt.orgs])
        usable, label = labels_at(bt.snap_org, bt.snap_at, bt.churn, 30, bt.labels_until)
        rows = usable & ~held[bt.snap_org]
        measures, y = bt.snap_measures[rows], label[rows].astype(float)
        folds = np.array([_fold_of(bt.orgs[o], 3) for o in bt.snap_org[rows]])
        for exclude in (SIZE_FACTORS, (*SIZE_FACTORS, "few_logins_per_user")):
            settings = FitSettings(exclude=exclude)
            trial_config, best = search_shapes(
                measures, y, folds, every_factor_on(config), settings
            )
            coefficients = fit_coefficients(measures, y, trial_config, settings)
            eng = trial_config["engagement"]
            print(
                f"{preset}: baseline half-life {half_life:g} d, few_logins_per_user "
                f"{'out' if 'few_logins_per_user' in exclude else 'in'}: cv log loss {best:.5f}; "
                f"login_decline {coefficients['login_decline']:.3f} (full "
                f"{eng['login_decline_full']:g}, prior {eng['login_decline_prior']:g}), "
                f"few_logins_per_user {coefficients.get('few_logins_per_user', 0.0):.3f}, "
                f"activity_decline {coefficients['activity_decline']:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
