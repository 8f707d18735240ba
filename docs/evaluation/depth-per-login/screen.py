"""Screen: a session's depth in place of the login volume (issue 13, thirty-fifth session).

v4's false alerts on the shifted setting come from its over-forecast there, and part of
that is `few_logins_per_user`, an absolute measure a population that logs in 30% less
reads as lower health. Feature uses per login (decayed) is the one usage measure of the
simulator that does not depend on the population's habit. Fitted beside v4's factors
(the size factors left out, as `fit` leaves them), instead of `few_logins_per_user`, or
neither, on the reference training organizations (seed 11); judged by the linear
predictor's 30-day ROC AUC and by the mean forecast over the observed rate ("over"), on
the reference held-out organizations and every snapshot of the other populations.

    python docs/evaluation/depth-per-login/screen.py [HALF_LIFE_DAYS]   # default 14
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from healthscore.core.events import UsageEvent
from healthscore.core.scoring.model import load_model
from healthscore_lab.evaluation.fit import SIZE_FACTORS, constrained_logistic, training_snapshots
from healthscore_lab.evaluation.log import from_population
from healthscore_lab.evaluation.metrics import auc, labels_at
from healthscore_lab.evaluation.replay import run_backtest
from healthscore_lab.evaluation.vector import FACTORS, normalized_shortfalls
from healthscore_lab.simulator.labelled import PopulationConfig, generate_population
from healthscore_lab.simulator.labelled import reference as reference_setting
from healthscore_lab.simulator.labelled import shifted as shifted_setting

V4 = load_model(Path("services/healthscore/model/health_model.v4.json"))
NAMES = [name for _component, name in FACTORS]
FITTED = [i for i, name in enumerate(NAMES) if name not in ("growth_baseline", *SIZE_FACTORS)]
LOGINS_PER_USER = NAMES.index("few_logins_per_user")
PRIOR_LOGINS = 2.0  # the depth shrinks toward 1 feature use per login by this many logins


def population(config: PopulationConfig, half_life_days: float) -> dict[str, Any]:
    """v4's replay of the population and, per snapshot, the decayed feature uses and logins."""
    log = from_population(generate_population(config))
    bt = run_backtest(log, V4)
    rate = math.log(2) / (half_life_days * 86_400)
    index = {org: i for i, org in enumerate(bt.orgs)}
    uses, logins, ref = (np.zeros(len(bt.orgs)) for _ in range(3))
    snap_uses, snap_logins = np.zeros(len(bt.snap_at)), np.zeros(len(bt.snap_at))
    usage = [event for event in log.events if isinstance(event, UsageEvent)]
    j = 0
    for k in np.argsort(bt.snap_at, kind="stable"):
        at = bt.snap_at[k]
        while j < len(usage) and usage[j].occurred_at.timestamp() <= at:
            event, j = usage[j], j + 1
            i = index.get(str(event.organization_id))
            if i is None:
                continue
            t = event.occurred_at.timestamp()
            decay = math.exp(-rate * max(0.0, t - ref[i]))
            uses[i] *= decay
            logins[i] *= decay
            ref[i] = max(ref[i], t)
            if event.type == "feature_used":
                uses[i] += 1
            elif event.type == "login":
                logins[i] += 1
        i = bt.snap_org[k]
        decay = math.exp(-rate * max(0.0, at - ref[i]))
        snap_uses[k], snap_logins[k] = uses[i] * decay, logins[i] * decay
    usable, label = labels_at(bt.snap_org, bt.snap_at, bt.churn, 30, bt.labels_until)
    held, _training = training_snapshots(bt)
    return {
        "bt": bt,
        "uses": snap_uses,
        "logins": snap_logins,
        "usable": usable,
        "label": label,
        "held": held[bt.snap_org],
    }


def depth_shortfall(p: dict[str, Any]) -> Any:
    depth = (p["uses"] + PRIOR_LOGINS) / (p["logins"] + PRIOR_LOGINS)
    return np.clip(1.0 - depth, 0.0, 1.0)


def design(p: dict[str, Any], variant: str) -> Any:
    shortfalls = normalized_shortfalls(p["bt"].snap_measures, V4)
    columns = [c for c in FITTED if c != LOGINS_PER_USER or variant in ("v4", "depth")]
    x = shortfalls[:, columns]
    if variant in ("depth", "depth_instead"):
        x = np.column_stack([x, depth_shortfall(p)])
    return x


def main() -> None:
    half_life = float(sys.argv[1]) if len(sys.argv) > 1 else 14.0
    settings = {
        "ref11": reference_setting(),
        "ref12": reference_setting(seed=12),
        "sh2027": shifted_setting(),
        "sh4242": shifted_setting(seed=4242),
        "sh777": shifted_setting(seed=777),
    }
    pops = {name: population(config, half_life) for name, config in settings.items()}
    for name, p in pops.items():
        depth = p["uses"] / np.maximum(p["logins"], 1e-9)
        seen = p["usable"] & (p["logins"] > 1)
        print(
            f"{name} depth: churning in 30 d {depth[seen & p['label']].mean():.3f}, "
            f"others {depth[seen & ~p['label']].mean():.3f}; "
            f"mean decayed logins {p['logins'][p['usable']].mean():.2f}"
        )
    for variant in ("v4", "depth", "without_logins_per_user", "depth_instead"):
        train = pops["ref11"]
        rows = train["usable"] & ~train["held"]
        w = constrained_logistic(
            design(train, variant)[rows], train["label"][rows].astype(float), 1e-3
        )
        figures = []
        for name, p in pops.items():
            judged = p["usable"] & (p["held"] if name == "ref11" else True)
            z = w[0] + design(p, variant)[judged] @ w[1:]
            forecast = 1.0 / (1.0 + np.exp(-z))
            y = p["label"][judged]
            figures.append(
                f"{name} auc {auc(y, z):.3f} over {forecast.mean() / max(y.mean(), 1e-9):.2f}"
            )
        print(variant, " | ".join(figures))
        if variant.startswith("depth"):
            weights = f"weight of the depth {w[-1]:.2f}"
            if variant == "depth":
                weights += f", of few_logins_per_user {w[1 + FITTED.index(LOGINS_PER_USER)]:.2f}"
            print("   " + weights)


if __name__ == "__main__":
    main()
