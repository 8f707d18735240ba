"""A model judged over several fresh draws of one simulated setting (`evaluate --seeds`).

One population of about 300 organizations decides a pass or a miss at a target
within its own sampling noise (a 30-day ROC AUC has a bootstrap standard error of
0.01-0.02 there): a model that meets a target in expectation misses it on some
draws, and one that misses it in expectation passes on others. Judged over many
draws of the same setting, each target gets a distribution: its mean with the
standard error of that mean, the spread, and on how many draws it was met. With
`--oracle`, the simulator's truth gets the same for its ROC AUC, and the model's
gap to it per draw.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from healthscore_lab.evaluation.evaluate import TARGETS

# what the summary reads from each report, beside its targets
_ORACLE_AUC = ("results", "oracle", "auc", "probability", "30")
_PER_DRAW = {"brier_below_baselines": "< each draw's baselines"}


def parse_seeds(text: str) -> list[int]:
    """`15-24`, `15,17,20` or a mix (`1-3,9`): the seeds in the order given, each once."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty seed in {text!r}")
        first, dash, last = part.partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise ValueError(f"not a seed or a range of seeds: {part!r}") from None
        if high < low:
            raise ValueError(f"empty range of seeds: {part!r}")
        seeds.extend(seed for seed in range(low, high + 1) if seed not in seeds)
    return seeds


def _dig(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _distribution(values: list[float]) -> dict[str, Any]:
    n = len(values)
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if n > 1 else None
    return {
        "draws": n,
        "mean": round(mean, 4),
        "standard_error": round(sd / math.sqrt(n), 4) if sd is not None else None,
        "sd": round(sd, 4) if sd is not None else None,
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def summarize(seeds: list[int], reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Per target of the reports (`evaluate`'s, in `seeds` order): its distribution
    over the draws and how many met it; and, where the reports carry the oracle, its
    30-day ROC AUC and the model's gap to it."""
    if not reports or len(seeds) != len(reports):
        raise ValueError("one report per seed, at least one")
    targets: dict[str, Any] = {}
    for name, first in reports[0]["targets"].items():
        entries = [report["targets"][name] for report in reports]
        values = [float(e["value"]) for e in entries if e["value"] is not None]
        judged = [e["met"] for e in entries if e["met"] is not None]
        stated = {str(e["target"]) for e in entries}
        targets[name] = {
            # a threshold that is a figure of each draw (its baselines' Brier) differs
            "target": first["target"] if len(stated) == 1 else _PER_DRAW.get(name, "per draw"),
            "met_on": sum(1 for met in judged if met),
            "judged_on": len(judged),
            "missed_seeds": [
                seed for seed, e in zip(seeds, entries, strict=True) if e["met"] is False
            ],
            **(_distribution(values) if values else {"draws": 0}),
        }
    summary: dict[str, Any] = {"seeds": seeds, "targets": targets}
    oracle = [_dig(report, _ORACLE_AUC) for report in reports]
    if all(value is not None for value in oracle):
        model = [float(report["targets"]["auc_30d"]["value"]) for report in reports]
        summary["oracle_auc_30d"] = _distribution([float(v) for v in oracle])
        summary["oracle_auc_30d"]["below_target_on"] = sum(
            1 for value in oracle if float(value) < TARGETS["auc_30d"]
        )
        summary["gap_to_oracle_auc_30d"] = _distribution(
            [float(o) - m for o, m in zip(oracle, model, strict=True)]
        )
    return summary


def render_summary(summary: dict[str, Any], reports: list[dict[str, Any]]) -> str:
    """A row per draw (the targets' figures) and one per target (its distribution)."""
    names = list(summary["targets"])
    short = {
        "auc_30d": "AUC 30d",
        "score_auc_30d": "score AUC",
        "brier_skill_vs_base_rate": "Brier skill",
        "brier_below_baselines": "Brier",
        "recall": "alerted",
        "median_lead_days": "lead (d)",
        "false_alerts_per_100_healthy_per_month": "false/100/mo",
    }
    oracle = "oracle_auc_30d" in summary
    header = f"{'seed':>8s}" + "".join(f"{short.get(n, n):>14s}" for n in names)
    if oracle:
        header += f"{'oracle AUC':>14s}"
    first = reports[0]
    lines = [
        f"model {first['model']}, {len(reports)} draws of "
        f"{first.get('source', '').split(' seed=')[0] or 'the setting'}, organizations judged: "
        f"{first['organizations']['judged_on']} (a figure followed by * missed its target)",
        "",
        header,
        "-" * len(header),
    ]
    for seed, report in zip(summary["seeds"], reports, strict=True):
        cells = []
        for name in names:
            entry = report["targets"][name]
            mark = "*" if entry["met"] is False else " "
            cells.append(f"{_fmt(entry['value'])}{mark}".rjust(14))
        if oracle:
            cells.append(_fmt(_dig(report, _ORACLE_AUC)).rjust(14))
        lines.append(f"{seed:>8d}" + "".join(cells))
    lines += ["", f"{'target':56s}{'met on':>10s}{'mean (SE)':>20s}{'min - max':>20s}"]
    for name, entry in summary["targets"].items():
        if entry["draws"]:
            met = f"{entry['met_on']}/{entry['judged_on']}"
            lines.append(_distribution_row(f"{name} {entry['target']}", met, entry))
    if oracle:
        entry = summary["oracle_auc_30d"]
        met = f"{entry['draws'] - entry['below_target_on']}/{entry['draws']}"
        lines.append(_distribution_row("oracle ROC AUC 30 days", met, entry))
        lines.append(
            _distribution_row("oracle - model ROC AUC", "", summary["gap_to_oracle_auc_30d"])
        )
    return "\n".join(lines) + "\n"


def _distribution_row(label: str, met: str, entry: dict[str, Any]) -> str:
    """label, met on, mean (SE) and min - max of a `_distribution`."""
    se = entry["standard_error"]
    mean = f"{_fmt(entry['mean'])} ({_fmt(se)})" if se is not None else _fmt(entry["mean"])
    return f"{label:56s}{met:>10s}{mean:>20s}{_fmt(entry['min']) + ' - ' + _fmt(entry['max']):>20s}"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
