"""The two baselines every figure is set beside, fitted on the training organizations.

- `days_since_last_activity`: days since the organization's newest usage event,
  alone. Its ranking is the raw number; its probability a one-feature logistic
  regression on log(1 + days).
- `raw_aggregates_logistic`: an L2-regularized logistic regression on the raw
  measured aggregates (`scoring.measure.MEASURES`: decayed counts, active users
  and features, open interactions, support signals, tenure...), each as
  log(1 + x), standardized. What a data scientist would try first, with no
  scoring model at all.

Both are fitted per horizon and *cross-fitted*: the organizations are cut into
five folds (by a hash of their id) and each fold's snapshots are predicted by a
fit on the other four, so every figure of a baseline is out-of-sample for every
organization, whichever organizations a report is computed on. Every snapshot
gets a prediction (their alerts need the whole daily path).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from healthscore.core.scoring.measure import MEASURES

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class Baseline:
    name: str
    risk: FloatArray  # per snapshot, higher = riskier (ranking)
    probability: dict[int, FloatArray]  # horizon -> per snapshot


def _features(measures: FloatArray) -> FloatArray:
    return np.log1p(np.maximum(measures, 0.0))


def _fit_predict(
    x: FloatArray, usable: BoolArray, label: BoolArray, folds: NDArray[np.int64]
) -> FloatArray:
    """Cross-fitted: each row's prediction comes from a fit on the other folds'
    usable rows, so no organization is ever predicted by a fit that saw it."""
    out = np.zeros(len(x))
    for fold in np.unique(folds):
        train = usable & (folds != fold)
        rows = folds == fold
        if not train.any() or label[train].all() or not label[train].any():
            out[rows] = float(label[train].mean()) if train.any() else 0.0
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        model.fit(x[train], label[train])
        out[rows] = model.predict_proba(x[rows])[:, 1]
    return out


def fit_baselines(
    measures: FloatArray,
    usable: dict[int, BoolArray],
    labels: dict[int, BoolArray],
    folds: NDArray[np.int64],
) -> list[Baseline]:
    """`usable[h]`, `labels[h]`: the snapshots with a known label at horizon h and the
    label; `folds`: each snapshot's organization's fold."""
    silent = measures[:, MEASURES.index("silent_days")]
    x_silent = np.log1p(silent)[:, None]
    x_all = _features(measures)
    return [
        Baseline(
            "days_since_last_activity",
            silent,
            {h: _fit_predict(x_silent, usable[h], labels[h], folds) for h in usable},
        ),
        Baseline(
            "raw_aggregates_logistic",
            _fit_predict(x_all, usable[30], labels[30], folds),
            {h: _fit_predict(x_all, usable[h], labels[h], folds) for h in usable},
        ),
    ]
