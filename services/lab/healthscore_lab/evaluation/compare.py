"""Which alert episodes a candidate model would add, drop or move, against the live one.

Both backtests replay the same log. Per organization, the raises are matched by
the core's `compare_raises` (the service's shadow report uses the same): each
live `risk_raised` with the candidate's nearest one within `window_days` (each
used once, nearest first); a match is *moved* by the difference in days
(negative: the candidate warns earlier), a live raise without a match is
*dropped*, a candidate raise without one is *added*. With churn labels, each
change is also judged: an added or earlier episode before a churn is a gain, a
dropped one a loss.
"""

from __future__ import annotations

import math
from typing import Any

from healthscore.contracts.enums import AlertKind
from healthscore.core.quality import ALERT_HORIZON_DAYS, WINDOW_DAYS, compare_raises, median
from healthscore_lab.evaluation.metrics import DAY
from healthscore_lab.evaluation.replay import Backtest
from healthscore_lab.evaluation.split import is_held_out


def _raises(bt: Backtest) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for alert in bt.alerts:
        if alert.kind is AlertKind.RISK_RAISED:
            out.setdefault(bt.orgs[alert.org], []).append(alert.at)
    return out


def compare_episodes(
    live: Backtest,
    candidate: Backtest,
    window_days: float = WINDOW_DAYS,
    organizations: str = "all",
) -> dict[str, Any]:
    """`organizations` "held_out": only the held-out organizations' episodes (those the
    two reports beside it judge; a fitted candidate's training organizations would
    count its own fit as gains)."""
    live_raises, candidate_raises = _raises(live), _raises(candidate)
    if organizations == "held_out":
        live_raises = {org: t for org, t in live_raises.items() if is_held_out(org)}
        candidate_raises = {org: t for org, t in candidate_raises.items() if is_held_out(org)}
    churn = {org: live.churn[index] for index, org in enumerate(live.orgs)}
    known = live.labels_until
    per_org: dict[str, dict[str, Any]] = {}
    moved: list[float] = []
    added = dropped = added_before_churn = dropped_before_churn = 0
    for org in sorted(set(live_raises) | set(candidate_raises)):
        changes = compare_raises(
            live_raises.get(org, []), candidate_raises.get(org, []), window_days
        )
        gone, new, shifts = changes.dropped, changes.added, changes.moved_days
        churned = churn.get(org, math.nan)

        def before_churn(t: float, churned: float = churned) -> bool:
            return bool(t < churned <= min(t + ALERT_HORIZON_DAYS * DAY, known))

        added += len(new)
        dropped += len(gone)
        added_before_churn += sum(1 for t in new if before_churn(t))
        dropped_before_churn += sum(1 for t in gone if before_churn(t))
        moved.extend(shifts)
        if changes.changed:
            per_org[org] = {"added": len(new), "dropped": len(gone), "moved_days": shifts}
    earlier = [s for s in moved if s < 0]
    return {
        "live_model": live.model_version,
        "candidate_model": candidate.model_version,
        "window_days": window_days,
        "added": added,
        "added_before_a_churn": added_before_churn,
        "dropped": dropped,
        "dropped_before_a_churn": dropped_before_churn,
        "moved": len(moved),
        "moved_earlier": len(earlier),
        "median_move_days": median(moved),
        "organizations_changed": len(per_org),
        "per_organization": per_org,
    }
