"""The two baselines every figure is set beside, fitted on the training organizations.

- `days_since_last_activity`: days since the organization's newest usage event,
  alone. Its ranking is the raw number; its probability a one-feature logistic
  regression on log(1 + days).
- `raw_aggregates_logistic`: an L2-regularized logistic regression on the raw
  measured aggregates (`scoring.measure.MEASURES`: decayed counts, active users
  and features, open interactions, support signals, tenure...), each as
  log(1 + x), standardized. What a data scientist would try first, with no
  scoring model at all.

Both are fitted per horizon on the training organizations' usable snapshots and
applied to every snapshot (their alerts need the whole daily path).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from healthscore.scoring.measure import MEASURES

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class Baseline:
    name: str
    risk: FloatArray  # per snapshot, higher = riskier (ranking)
    probability: dict[int, FloatArray]  # horizon -> per snapshot


def _features(measures: FloatArray) -> FloatArray:
    return np.log1p(np.maximum(measures, 0.0))


def _fit_predict(x: FloatArray, train: BoolArray, label: BoolArray) -> FloatArray:
    if label[train].all() or not label[train].any():
        return np.full(len(x), float(label[train].mean()) if train.any() else 0.0)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    model.fit(x[train], label[train])
    return np.asarray(model.predict_proba(x)[:, 1], dtype=float)


def fit_baselines(
    measures: FloatArray,
    train_rows: dict[int, BoolArray],
    labels: dict[int, BoolArray],
) -> list[Baseline]:
    """`train_rows[h]`: usable snapshots of training organizations at horizon h."""
    silent = measures[:, MEASURES.index("silent_days")]
    x_silent = np.log1p(silent)[:, None]
    x_all = _features(measures)
    return [
        Baseline(
            "days_since_last_activity",
            silent,
            {h: _fit_predict(x_silent, train_rows[h], labels[h]) for h in train_rows},
        ),
        Baseline(
            "raw_aggregates_logistic",
            _fit_predict(x_all, train_rows[30], labels[30]),
            {h: _fit_predict(x_all, train_rows[h], labels[h]) for h in train_rows},
        ),
    ]
