"""Which alert episodes a candidate model would add, drop or move, against the live one.

Both backtests replay the same log. Per organization, each live `risk_raised`
is matched with the candidate's nearest one within `window_days` (each used
once, nearest first): a match is *moved* by the difference in days (negative:
the candidate warns earlier), a live raise without a match is *dropped*, a
candidate raise without one is *added*. With churn labels, each change is also
judged: an added or earlier episode before a churn is a gain, a dropped one a
loss.
"""

from __future__ import annotations

import math
from typing import Any

from healthscore.contracts.enums import AlertKind
from healthscore_lab.evaluation.metrics import ALERT_HORIZON_DAYS, DAY
from healthscore_lab.evaluation.replay import Backtest

WINDOW_DAYS = 14.0


def _raises(bt: Backtest) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for alert in bt.alerts:
        if alert.kind is AlertKind.RISK_RAISED:
            out.setdefault(bt.orgs[alert.org], []).append(alert.at)
    return out


def compare_episodes(
    live: Backtest, candidate: Backtest, window_days: float = WINDOW_DAYS
) -> dict[str, Any]:
    live_raises, candidate_raises = _raises(live), _raises(candidate)
    churn = {org: live.churn[index] for index, org in enumerate(live.orgs)}
    per_org: dict[str, dict[str, Any]] = {}
    moved: list[float] = []
    added = dropped = added_before_churn = dropped_before_churn = 0
    for org in sorted(set(live_raises) | set(candidate_raises)):
        ours, theirs = list(live_raises.get(org, [])), list(candidate_raises.get(org, []))
        pairs = sorted(
            (abs(b - a), a, b) for a in ours for b in theirs if abs(b - a) <= window_days * DAY
        )
        matched_a: set[float] = set()
        matched_b: set[float] = set()
        shifts: list[float] = []
        for _gap, a, b in pairs:
            if a in matched_a or b in matched_b:
                continue
            matched_a.add(a)
            matched_b.add(b)
            shifts.append(round((b - a) / DAY, 2))
        gone = [a for a in ours if a not in matched_a]
        new = [b for b in theirs if b not in matched_b]
        churned = churn.get(org, math.nan)

        def before_churn(t: float, churned: float = churned) -> bool:
            return bool(t < churned <= t + ALERT_HORIZON_DAYS * DAY)

        added += len(new)
        dropped += len(gone)
        added_before_churn += sum(1 for t in new if before_churn(t))
        dropped_before_churn += sum(1 for t in gone if before_churn(t))
        moved.extend(s for s in shifts if s != 0.0)
        if gone or new or any(shifts):
            per_org[org] = {
                "added": len(new),
                "dropped": len(gone),
                "moved_days": [s for s in shifts if s != 0.0],
            }
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
        "median_move_days": sorted(moved)[len(moved) // 2] if moved else None,
        "organizations_changed": len(per_org),
        "per_organization": per_org,
    }
