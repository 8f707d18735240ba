"""`healthscore adapt`: a model's usage scales adapted to a population's own volume,
from its event log alone (no churn labels).

A population that uses the product less at the same health (fewer logins per
user, fewer value actions) reads as less healthy to every factor that judges an
absolute amount (`exp(-measure / scale)`): on the shifted simulator setting
(30% less usage) v4 forecasts 1.3-1.5 times the observed churn rate and raises
5.9-7.3 false alerts per 100 healthy organizations a month. Labels that would
recalibrate it (`fit --calibration-only`) take months to exist in a new
deployment; its event log exists from the first week. So: the population's
median of each such measure, over the daily as-of points of its training
organizations where the measure is positive, against the same median of the
population the scales fit (`usage_reference` in the model), and every usage
scale times that ratio. Ratios of the organization to itself (activity decline,
the feature share) and support measures are left alone.

The same measure sits on both sides of each ratio, from the same half-lives, so
the adapted model records the new population's volume as its own reference:
adapting it again to the same log changes nothing, and adapting it to a third
population gives the scales the original model would get there. When the log
has labels the candidate is judged on the held-out organizations beside the
current model and refused if worse, as `fit` does; without labels it is written
unjudged (`healthscore evaluate --candidate`, or shadow scoring in the service,
shows what it would change before it is promoted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from healthscore.core.scoring.model import ScoreModel, UsageVolume
from healthscore.core.scoring.volume import USAGE_SCALES, volume_ratios
from healthscore_lab.evaluation.evaluate import evaluate
from healthscore_lab.evaluation.fit import (
    Config,
    FitSettings,
    _copy,
    _model,
    _summary,
    _worse,
    training_snapshots,
)
from healthscore_lab.evaluation.log import LabelledLog
from healthscore_lab.evaluation.replay import run_backtest
from healthscore_lab.evaluation.vector import usage_volume

WARMUP_DAYS = FitSettings().warmup_days  # `fit`'s: the same as-of points measure both sides


class AdaptError(ValueError):
    """A model or log that cannot be adapted (the message says why)."""


@dataclass
class AdaptResult:
    config: Config
    model: ScoreModel
    volume: dict[str, float]  # the log's training organizations' usage volume
    ratios: dict[str, float]  # measure -> the log's volume over the reference's (1: kept)
    candidate: dict[str, Any] | None = None  # evaluate() reports, when the log has labels
    current: dict[str, Any] | None = None
    accepted: bool = True
    reasons: list[str] = field(default_factory=list)


# Fewer training organizations than this: their median volume is too noisy to scale
# a model by (one organization's gave ratios up to 3.1); written only with --force
MIN_TRAINING_ORGANIZATIONS = 30


def adapted_config(
    current_config: Config, reference: dict[str, float], volume: dict[str, float], version: str
) -> tuple[Config, dict[str, float]]:
    """`current_config` with each usage scale times volume / reference, the volume as
    its new reference, and `version`. Where either is 0 the scale and its reference are
    kept: the population says nothing about that habit."""
    config = _copy(current_config)
    known = volume_ratios(volume, UsageVolume(**reference))
    ratios = {name: known.get(name, 1.0) for name in USAGE_SCALES}
    for name, (section, scale) in USAGE_SCALES.items():
        config[section][scale] = float(config[section][scale]) * ratios[name]
    config["usage_reference"] = {
        name: volume[name] if name in known else reference[name] for name in USAGE_SCALES
    }
    config["version"] = version
    return config, ratios


def adapt(
    log: LabelledLog,
    current: ScoreModel,
    current_config: Config,
    version: str,
    progress: Callable[[str], None] = lambda _message: None,
) -> AdaptResult:
    if current.usage_reference is None:
        raise AdaptError(
            f"model {current.version} records no usage_reference (the usage volume its "
            "scales were fitted to): refit it with `healthscore fit`, which records it"
        )
    reference = msgspec.structs.asdict(current.usage_reference)
    progress(f"replaying {len(log.events)} events under {current.version}")
    base = run_backtest(log, current, warmup_days=WARMUP_DAYS)
    held, rows = training_snapshots(base)
    if not rows.any():
        raise AdaptError("the log has no daily as-of point of a training organization")
    volume = usage_volume(base.snap_measures[rows])
    config, ratios = adapted_config(current_config, reference, volume, version)
    progress(
        "usage volume against the reference: "
        + ", ".join(f"{name} {volume[name]:.3g} ({ratios[name]:.3f}x)" for name in USAGE_SCALES)
    )
    record: dict[str, Any] = {
        "adapted_from": current.version,
        "source": log.source,
        "training_organizations": int((~held).sum()),
        "usage_ratios": ratios,
    }
    few = (
        [
            f"only {record['training_organizations']} training organizations (at least "
            f"{MIN_TRAINING_ORGANIZATIONS}): their median usage is noise, not the population's"
        ]
        if record["training_organizations"] < MIN_TRAINING_ORGANIZATIONS
        else []
    )
    if not log.labelled:
        config["evaluation"] = {**record, "judged": False}
        return AdaptResult(config, _model(config), volume, ratios, accepted=not few, reasons=few)
    model = _model(config)
    progress(f"replaying under {version}; judging it on the held-out organizations")
    adapted = run_backtest(log, model, warmup_days=WARMUP_DAYS)
    candidate = evaluate(adapted, model, source=log.source)
    current_report = evaluate(base, current, source=log.source)
    config["evaluation"] = {
        **record,
        "judged": True,
        "held_out_organizations": candidate["organizations"]["judged"],
        "held_out": _summary(candidate),
        "current_model_held_out": {current.version: _summary(current_report)},
    }
    reasons = few + _worse(candidate, current_report)
    return AdaptResult(
        config, _model(config), volume, ratios, candidate, current_report, not reasons, reasons
    )
