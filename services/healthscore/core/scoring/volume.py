"""A population's usage volume: how much its organizations use the product; pure.

Every factor that judges an absolute amount of usage reads `exp(-measure / scale)`,
so a population that uses the product less at the same health reads as less
healthy to it. The volume is, for each such measure, its median over the
population's as-of points at which the organization used the product within
`ACTIVE_DAYS` and the measure is positive: typical use, not the tail of an
organization that has gone (without churn labels nothing else says it has).
A model records the volume its scales fit (`usage_reference`); `healthscore adapt`
scales them to another population's, and the service's drift gauge compares the
live population's with it (`healthscore_usage_volume_ratio`).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from healthscore.core.scoring.measure import Measures
from healthscore.core.scoring.model import ScoreModel, UsageVolume
from healthscore.core.scoring.score import logins_per_user

# usage measure -> the scale of the factor that reads it, as (model section, field)
USAGE_SCALES: dict[str, tuple[str, str]] = {
    "activity": ("engagement", "activity_scale"),
    "logins": ("engagement", "login_scale"),
    "logins_per_user": ("engagement", "login_per_user_scale"),
    "value_actions": ("adoption", "depth_scale"),
    "positive_commercial": ("growth", "commercial_scale"),
    "clients_added": ("growth", "client_scale"),
}
ACTIVE_DAYS = 7.0


def judged_measures(model: ScoreModel) -> frozenset[str]:
    """The usage measures whose factor has points in `model` (v4: logins per user); a
    factor's points sit beside its scale (`login_per_user_scale`, `..._points`)."""
    return frozenset(
        name
        for name, (section, scale) in USAGE_SCALES.items()
        if float(getattr(getattr(model, section), scale.removesuffix("_scale") + "_points")) > 0
    )


def usage_volume(rows: Iterable[Measures]) -> dict[str, float]:
    """Each usage measure's median over `rows` of organizations active within
    `ACTIVE_DAYS` where it is positive (0 where it never is)."""
    values: dict[str, list[float]] = {name: [] for name in USAGE_SCALES}
    for m in rows:
        if m.silent_days > ACTIVE_DAYS:
            continue
        for name, column in values.items():
            x = (
                logins_per_user(m.logins, m.known_users)
                if name == "logins_per_user"
                else getattr(m, name)
            )
            if x > 0:
                column.append(x)
    return {name: statistics.median(xs) if xs else 0.0 for name, xs in values.items()}


def volume_ratios(volume: dict[str, float], reference: UsageVolume) -> dict[str, float]:
    """volume / reference per measure, for the measures both know (positive)."""
    return {
        name: volume[name] / ref
        for name in USAGE_SCALES
        if volume[name] > 0 and (ref := float(getattr(reference, name))) > 0
    }
