"""`healthscore evaluate`: a backtest's figures, beside two baselines, out of sample.

`evaluate(backtest, model)` returns a JSON-ready report (see `metrics` for the
definitions). The figures are computed on the held-out organizations
(`split.is_held_out`, the ones `fit` never trains on), or with
`organizations="all"` on every organization, which is out of sample only for a
population the model was not fitted on (another simulator setting, another
seed, another customer base). The baselines are cross-fitted (`baselines`), so
theirs are out of sample either way. The targets of the issue are checked at the
end of the report.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from healthscore.contracts.enums import AlertKind
from healthscore.core.scoring.model import COMPONENTS, ScoreModel
from healthscore_lab.evaluation.baselines import fit_baselines
from healthscore_lab.evaluation.metrics import (
    DAY,
    HORIZONS,
    alert_figures,
    auc,
    bootstrap_auc,
    brier,
    hysteresis_raises,
    labels_at,
    reliability,
)
from healthscore_lab.evaluation.replay import Backtest
from healthscore_lab.evaluation.split import is_held_out
from healthscore_lab.evaluation.vector import FACTOR_NAMES, factor_table

if TYPE_CHECKING:
    from healthscore_lab.evaluation.oracle import Oracle

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

TARGETS = {
    "auc_30d": 0.93,  # ROC AUC of churn_probability, churn within 30 days
    "brier_skill_vs_base_rate": 0.40,  # 1 - brier / brier(constant base rate)
    "recall": 0.60,  # churners alerted before churn
    "median_lead_days": 14.0,
    "false_alerts_per_100_healthy_per_month": 5.0,  # at most
}


def _skill(brier_30d: float | None, base_brier: float) -> float | None:
    """1 - brier / the base rate's; none against a base rate that is never wrong (no
    churner among the organizations judged: there is no skill to measure)."""
    if brier_30d is None or base_brier <= 0:
        return None
    return _round(1 - brier_30d / base_brier)


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits)


def _mean(values: Any) -> float | None:
    """The mean to two decimals; None of no value (labels without a churner judged:
    numpy's mean of nothing warned on stderr, review 37a L4)."""
    return _round(values.mean(), 2) if values.size else None


def _alerts_dict(figures: Any) -> dict[str, Any]:
    return {
        "episodes": figures.episodes,
        "episodes_with_known_outcome": figures.episodes_known,
        "true_episodes": figures.true_episodes,
        "precision": _round(figures.precision),
        "churners": figures.churners,
        "churners_alerted": figures.churners_alerted,
        "recall": _round(figures.recall),
        "median_lead_days": _round(figures.median_lead_days, 1),
        "lead_days": [round(d, 1) for d in figures.lead_days],
        "healthy_organizations": figures.healthy_organizations,
        "false_alerts_on_healthy": figures.false_alerts_on_healthy,
        "false_alerts_per_100_healthy_per_month": _round(
            figures.false_alerts_per_100_healthy_per_month, 2
        ),
    }


FOLDS = 5


def _fold(org: str) -> int:
    return hashlib.sha256(b"healthscore-baseline-fold:" + org.encode()).digest()[0] % FOLDS


BOOTSTRAP_REPLICATES = 200


def evaluate(
    bt: Backtest,
    model: ScoreModel,
    *,
    source: str = "",
    organizations: str = "held_out",
    oracle: Oracle | None = None,
) -> dict[str, Any]:
    if organizations not in ("held_out", "all"):
        raise ValueError("organizations must be 'held_out' or 'all'")
    held = np.array([is_held_out(org) or organizations == "all" for org in bt.orgs])
    snap_held = held[bt.snap_org]
    org_fold = np.array([_fold(org) for org in bt.orgs], dtype=np.int64)
    snap_fold = org_fold[bt.snap_org]
    usable: dict[int, BoolArray] = {}
    label: dict[int, BoolArray] = {}
    for horizon in HORIZONS:
        usable[horizon], label[horizon] = labels_at(
            bt.snap_org, bt.snap_at, bt.churn, horizon, bt.labels_until
        )
    fitted = {h: usable[h] for h in HORIZONS if usable[h].any()}
    baselines = fit_baselines(bt.snap_measures, fitted, label, snap_fold) if 30 in fitted else []
    test = {h: usable[h] & snap_held for h in HORIZONS}
    y30 = label[30][test[30]]
    if not len(y30):
        known = datetime.fromtimestamp(bt.labels_until, UTC).date().isoformat()
        raise ValueError(
            f"no {'held-out ' if organizations == 'held_out' else ''}as-of point with 30 days "
            f"of known labels after it: nothing to judge (the labels are known until "
            f"{known}; an as-of point needs 30 days of them after it, and 14 days of "
            "events before it)"
        )
    # the constant forecast, cross-fitted like the baselines: the other folds' rate
    rates = np.zeros(len(bt.snap_at))
    for fold in range(FOLDS):
        others = usable[30] & (snap_fold != fold)
        rates[snap_fold == fold] = label[30][others].mean() if others.any() else 0.0
    base_rate = float(label[30][usable[30]].mean()) if usable[30].any() else 0.0
    base_brier = brier(y30, rates[test[30]])
    first_point = float(bt.snap_at.min()) if len(bt.snap_at) else bt.start
    selected = [index for index, is_held in enumerate(held) if is_held]

    def alerts_of(raised: list[tuple[int, float]]) -> dict[str, Any]:
        return _alerts_dict(
            alert_figures(
                raised, bt.churn, bt.first_seen, selected, first_point, bt.end, bt.labels_until
            )
        )

    model_raised = [(a.org, a.at) for a in bt.alerts if a.kind is AlertKind.RISK_RAISED]
    model_entry: dict[str, Any] = {
        "auc": {
            "score": {
                str(h): _round(auc(label[h][test[h]], -bt.snap_score[test[h]])) for h in HORIZONS
            },
            "churn_probability": {
                str(h): _round(auc(label[h][test[h]], bt.snap_probability[test[h]]))
                for h in HORIZONS
            },
        },
        "brier_30d": _round(brier(y30, bt.snap_probability[test[30]])),
        "reliability_30d": [vars(b) for b in reliability(y30, bt.snap_probability[test[30]])],
        "alerts": alerts_of(model_raised),
        "alert_triggers": _trigger_counts(bt, held),
    }
    model_entry["brier_skill_vs_base_rate"] = _skill(model_entry["brier_30d"], base_brier)
    results: dict[str, Any] = {"model": model_entry}
    alerts = model.alerts
    for baseline in baselines:
        raised = hysteresis_raises(
            bt.snap_org,
            bt.snap_at,
            baseline.probability[30],
            alerts.enter_probability,
            alerts.exit_probability,
            alerts.cooldown_hours / 24,
        )
        entry: dict[str, Any] = {
            "auc": {
                "rank": {
                    str(h): _round(auc(label[h][test[h]], baseline.risk[test[h]])) for h in HORIZONS
                },
                "probability": {
                    str(h): _round(auc(label[h][test[h]], baseline.probability[h][test[h]]))
                    for h in HORIZONS
                    if h in baseline.probability
                },
            },
            "brier_30d": _round(brier(y30, baseline.probability[30][test[30]])),
            "reliability_30d": [
                vars(b) for b in reliability(y30, baseline.probability[30][test[30]])
            ],
            "alerts": alerts_of(raised),
        }
        entry["brier_skill_vs_base_rate"] = _skill(entry["brier_30d"], base_brier)
        results[baseline.name] = entry
    results["base_rate"] = {"rate": _round(base_rate), "brier_30d": _round(base_brier)}
    if oracle is not None:
        results["oracle"] = _oracle_entry(
            bt, model, oracle, held, test, label, base_brier, alerts_of
        )

    report: dict[str, Any] = {
        "model": bt.model_version,
        "source": source,
        "organizations": {
            "all": len(bt.orgs),
            "judged": int(held.sum()),
            "judged_on": organizations,
        },
        "snapshots_30d": {
            "held_out": int(test[30].sum()),
            "positive": int(y30.sum()),
        },
        "stream_days": round((bt.end - bt.start) / DAY, 1),
        "results": results,
        "contributions": _contributions(bt, model, test[30], label[30]),
        "closures": _closures(bt, held),
    }
    report["targets"] = _targets(report)
    return report


def _oracle_entry(
    bt: Backtest,
    model: ScoreModel,
    oracle: Oracle,
    held: BoolArray,
    test: dict[int, BoolArray],
    label: dict[int, BoolArray],
    base_brier: float,
    alerts_of: Any,
) -> dict[str, Any]:
    """The oracle's figures (`oracle`), and the sampling error of the 30-day ROC AUC:
    a bootstrap over the judged organizations, the model's and the oracle's paired."""
    from healthscore_lab.evaluation.oracle import choose_alerts

    p30 = oracle.probability[30]
    rows = test[30]
    y30 = label[30][rows]
    train = [index for index, org in enumerate(bt.orgs) if not is_held_out(org)]
    raised, rule = choose_alerts(bt, p30, train, model.alerts.cooldown_hours / 24)
    # the model's own alert settings on the true probability: no choice made on the data
    alerts = model.alerts
    at_model_rule = hysteresis_raises(
        bt.snap_org,
        bt.snap_at,
        p30,
        alerts.enter_probability,
        alerts.exit_probability,
        alerts.cooldown_hours / 24,
        alerts.persist_hours / 24,
        alerts.immediate_probability,
    )
    entry: dict[str, Any] = {
        "auc": {
            "probability": {
                str(h): _round(auc(label[h][test[h]], oracle.probability[h][test[h]]))
                for h in HORIZONS
            },
            "latent_health": {
                str(h): _round(auc(label[h][test[h]], -oracle.latent[test[h]])) for h in HORIZONS
            },
        },
        "brier_30d": _round(brier(y30, p30[rows])),
        "brier": {
            str(h): _round(brier(label[h][test[h]], oracle.probability[h][test[h]]))
            for h in HORIZONS
            if test[h].any()
        },
        "reliability_30d": [vars(b) for b in reliability(y30, p30[rows])],
        "alerts": alerts_of(raised),
        "alert_rule": rule,
        "alerts_at_model_rule": alerts_of(at_model_rule),
        "monte_carlo": {"paths": oracle.paths, "seed": oracle.seed},
    }
    entry["brier_skill_vs_base_rate"] = _skill(entry["brier_30d"], base_brier)
    if y30.any() and not y30.all():
        draws = bootstrap_auc(
            bt.snap_org[rows],
            y30,
            {
                "model": bt.snap_probability[rows],
                "oracle": p30[rows],
                "latent_health": -oracle.latent[rows],
            },
            BOOTSTRAP_REPLICATES,
        )
        gap = draws["oracle"] - draws["model"]

        def spread(values: FloatArray) -> dict[str, Any]:
            return {
                "se": _round(float(np.nanstd(values, ddof=1))),
                "ci95": [_round(float(q)) for q in np.nanpercentile(values, [2.5, 97.5])],
            }

        entry["bootstrap_auc_30d"] = {
            "replicates": BOOTSTRAP_REPLICATES,
            "organizations": len(np.unique(bt.snap_org[rows])),
            **{name: spread(values) for name, values in draws.items()},
            "oracle_minus_model": {"mean": _round(float(np.nanmean(gap))), **spread(gap)},
            "oracle_below_target_share": _round(
                float(np.nanmean(draws["oracle"] < TARGETS["auc_30d"])), 3
            ),
        }
    return entry


def _trigger_counts(bt: Backtest, held: BoolArray) -> dict[str, int]:
    counts: dict[str, int] = {}
    for alert in bt.alerts:
        if held[alert.org] and alert.kind is AlertKind.RISK_RAISED:
            key = alert.trigger or "unknown"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _contributions(
    bt: Backtest, model: ScoreModel, rows: BoolArray, label: BoolArray
) -> dict[str, Any]:
    """Per component: its AUC alone and its mean for churners and the others; per
    factor: its mean impact for both, and the score's AUC without it."""
    if not rows.any():
        return {}
    y = label[rows]
    impacts, _components, scores = factor_table(bt.snap_measures[rows], model)
    base = auc(y, -scores)
    components = {
        name: {
            "auc_alone": _round(auc(y, -bt.snap_components[rows, index])),
            "mean_churners": _mean(bt.snap_components[rows][y, index]),
            "mean_retained": _mean(bt.snap_components[rows][~y, index]),
        }
        for index, name in enumerate(COMPONENTS)
    }
    factors: dict[str, Any] = {}
    for index, name in enumerate(FACTOR_NAMES):
        column = impacts[:, index]
        if not column.any():
            continue
        without = auc(y, -(scores - column))
        factors[name] = {
            "mean_impact_churners": _mean(column[y]),
            "mean_impact_retained": _mean(column[~y]),
            "score_auc_without": _round(without),
            "auc_change_without": _round((without or 0) - (base or 0)),
        }
    return {"score_auc_30d": _round(base), "components": components, "factors": factors}


def _closures(bt: Backtest, held: BoolArray) -> dict[str, Any]:
    jumps = [after - before for org, _t, before, after in bt.closures if held[org]]
    if not jumps:
        return {"count": 0}
    return {
        "count": len(jumps),
        "median_jump": _round(float(np.median(jumps)), 2),
        "max_jump": _round(max(jumps), 2),
        "over_20_points": sum(1 for j in jumps if j > 20),
    }


def _targets(report: dict[str, Any]) -> dict[str, Any]:
    model = report["results"]["model"]
    alerts = model["alerts"]
    others = [
        report["results"][name]["brier_30d"]
        for name in ("days_since_last_activity", "raw_aggregates_logistic")
        if name in report["results"]
    ]
    checks = {
        "auc_30d": (model["auc"]["churn_probability"]["30"], ">=", TARGETS["auc_30d"]),
        "score_auc_30d": (model["auc"]["score"]["30"], ">=", TARGETS["auc_30d"]),
        "brier_skill_vs_base_rate": (
            model["brier_skill_vs_base_rate"],
            ">=",
            TARGETS["brier_skill_vs_base_rate"],
        ),
        "brier_below_baselines": (
            model["brier_30d"],
            "<",
            min(others) if others else None,
        ),
        "recall": (alerts["recall"], ">=", TARGETS["recall"]),
        "median_lead_days": (alerts["median_lead_days"], ">=", TARGETS["median_lead_days"]),
        "false_alerts_per_100_healthy_per_month": (
            alerts["false_alerts_per_100_healthy_per_month"],
            "<=",
            TARGETS["false_alerts_per_100_healthy_per_month"],
        ),
    }
    out: dict[str, Any] = {}
    for name, (value, op, target) in checks.items():
        met = None
        if value is not None and target is not None:
            if op == ">=":
                met = value >= target
            else:
                met = value <= target if op == "<=" else value < target
        out[name] = {"value": value, "target": f"{op} {target}", "met": met}
    return out
