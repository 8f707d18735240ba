"""The evaluation report as a readable table, and its plots (matplotlib, PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from healthscore_lab.evaluation.metrics import labels_at
from healthscore_lab.evaluation.replay import Backtest
from healthscore_lab.evaluation.split import is_held_out

_COLUMNS = (
    ("model", "model"),
    ("days_since_last_activity", "days since activity"),
    ("raw_aggregates_logistic", "raw-aggregate LR"),
    ("oracle", "oracle (the truth)"),
)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_table(report: dict[str, Any]) -> str:
    results = report["results"]
    names = [(key, label) for key, label in _COLUMNS if key in results]
    lines = [
        f"model {report['model']} on {report.get('source') or 'the log'}: "
        f"{report['organizations']['judged']} of {report['organizations']['all']} "
        f"organizations judged ({report['organizations']['judged_on']}), "
        f"{report['snapshots_30d']['held_out']} daily snapshots "
        f"({report['snapshots_30d']['positive']} churn within 30 days), "
        f"{report['stream_days']} days",
        "",
    ]
    header = f"{'figure':44s}" + "".join(f"{label:>20s}" for _key, label in names)
    lines += [header, "-" * len(header)]

    def row(label: str, values: list[Any], digits: int = 3) -> None:
        lines.append(f"{label:44s}" + "".join(f"{_fmt(v, digits):>20s}" for v in values))

    for horizon in ("30", "60", "90"):
        values = []
        for key, _label in names:
            auc = results[key]["auc"]
            chosen = {"model": "churn_probability", "oracle": "probability"}.get(key, "rank")
            values.append(auc[chosen][horizon])
        row(f"ROC AUC, churn within {horizon} days", values)
    row("ROC AUC of the score (model), 30 days", [results["model"]["auc"]["score"]["30"]])
    row("Brier score, 30 days", [results[key]["brier_30d"] for key, _l in names], 4)
    row(
        "Brier skill vs the base rate (1 - B/B0)",
        [results[key]["brier_skill_vs_base_rate"] for key, _l in names],
    )
    base = results["base_rate"]
    row("  base rate / its Brier score", [f"{base['rate']:.3f} / {base['brier_30d']:.4f}"])
    for field, label, digits in (
        ("recall", "churners alerted (recall)", 3),
        ("median_lead_days", "median lead time, days", 1),
        ("precision", "alert precision (churn within 60 days)", 3),
        ("false_alerts_per_100_healthy_per_month", "false alerts / 100 healthy / month", 2),
        ("episodes", "risk episodes raised", 0),
    ):
        row(label, [results[key]["alerts"][field] for key, _l in names], digits)
    if "oracle" in results:
        _oracle_lines(results["oracle"], lines)
    triggers = results["model"].get("alert_triggers") or {}
    lines.append(
        "  model's raises by trigger: "
        + (", ".join(f"{k} {v}" for k, v in triggers.items()) or "none")
    )
    closures = report.get("closures") or {}
    if closures.get("count"):
        lines.append(
            f"  closing an escalation or cancellation request moved the score by "
            f"{closures['median_jump']} points (median), at most {closures['max_jump']} "
            f"({closures['over_20_points']} of {closures['count']} over 20)"
        )
    lines += ["", "reliability of churn_probability (30 days): forecast bin, n, mean, observed"]
    for entry in results["model"]["reliability_30d"]:
        if entry["count"]:
            lines.append(
                f"  {entry['low']:.1f}-{entry['high']:.1f} {entry['count']:7d} "
                f"{entry['mean_forecast']:.3f} {entry['observed_rate']:.3f}"
            )
    contributions = report.get("contributions") or {}
    if contributions:
        lines += ["", "components: ROC AUC alone, mean for churners / the others (30 days)"]
        for name, c in contributions["components"].items():
            lines.append(
                f"  {name:12s} {_fmt(c['auc_alone'])} "
                f"{_fmt(c['mean_churners'], 1)} / {_fmt(c['mean_retained'], 1)}"
            )
        lines += ["factors: mean impact churners / the others, score's ROC AUC change without it"]
        ranked = sorted(
            contributions["factors"].items(), key=lambda item: item[1]["auc_change_without"]
        )
        for name, f in ranked:
            lines.append(
                f"  {name:34s} {_fmt(f['mean_impact_churners'], 2):>7s} / "
                f"{_fmt(f['mean_impact_retained'], 2):>6s}   {f['auc_change_without']:+.4f}"
            )
    lines += ["", "targets:"]
    for name, t in report["targets"].items():
        met = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        lines.append(f"  {name:40s} {_fmt(t['value'])} {t['target']:>10s}  {met}")
    return "\n".join(lines) + "\n"


def _oracle_lines(oracle: dict[str, Any], lines: list[str]) -> None:
    latent = oracle["auc"]["latent_health"]
    lines.append(
        "  oracle: latent health alone, ROC AUC 30/60/90 days: "
        + " / ".join(_fmt(latent[h]) for h in ("30", "60", "90"))
    )
    rule = oracle["alert_rule"]
    lines.append(
        f"  oracle's alerts: 30-day probability >= {rule['enter_probability']} held "
        f"{rule['persist_days']} days, exit below {rule['exit_probability']:g}, "
        f"chosen on {rule['chosen_on']}"
    )
    same = oracle["alerts_at_model_rule"]
    lines.append(
        f"  oracle's alerts under the model's alert settings: alerted {_fmt(same['recall'])}, "
        f"median lead {_fmt(same['median_lead_days'], 1)} days, false alerts "
        f"{_fmt(same['false_alerts_per_100_healthy_per_month'], 2)}, precision "
        f"{_fmt(same['precision'])}"
    )
    boot = oracle.get("bootstrap_auc_30d")
    if boot:
        lines.append(
            f"  ROC AUC 30 days over {boot['replicates']} resamples of the "
            f"{boot['organizations']} organizations: SE model {_fmt(boot['model']['se'])}, "
            f"oracle {_fmt(boot['oracle']['se'])} (95% {_fmt(boot['oracle']['ci95'][0])}-"
            f"{_fmt(boot['oracle']['ci95'][1])}); oracle - model "
            f"{_fmt(boot['oracle_minus_model']['mean'])} (SE "
            f"{_fmt(boot['oracle_minus_model']['se'])})"
        )


def write_plots(bt: Backtest, report: dict[str, Any], directory: Path) -> list[Path]:
    """reliability.png, score_distributions.png, lead_times.png in `directory`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    results = report["results"]

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
    for key, label in _COLUMNS:
        if key not in results:
            continue
        bins = [b for b in results[key]["reliability_30d"] if b["count"]]
        ax.plot(
            [b["mean_forecast"] for b in bins],
            [b["observed_rate"] for b in bins],
            marker="o",
            label=f"{label} (Brier {results[key]['brier_30d']:.4f})",
        )
    ax.set_xlabel("forecast probability of churn within 30 days")
    ax.set_ylabel("observed share that churned")
    ax.set_title(f"Reliability, model {report['model']}")
    ax.legend(fontsize=8)
    path = directory / "reliability.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)

    judged_all = report["organizations"]["judged_on"] == "all"
    held = np.array([judged_all or is_held_out(org) for org in bt.orgs])
    usable, churns = labels_at(bt.snap_org, bt.snap_at, bt.churn, 30, bt.labels_until)
    rows = usable & held[bt.snap_org]
    fig, ax = plt.subplots(figsize=(6, 4))
    edges = [float(x) for x in np.linspace(0, 100, 41)]
    ax.hist(bt.snap_score[rows & ~churns], bins=edges, alpha=0.6, density=True, label="retained")
    ax.hist(bt.snap_score[rows & churns], bins=edges, alpha=0.6, density=True, label="churn < 30 d")
    ax.set_xlabel("health score")
    ax.set_ylabel("density (daily snapshots)")
    ax.set_title(f"Scores of churners and the others, model {report['model']}")
    ax.legend()
    path = directory / "score_distributions.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(6, 4))
    leads = results["model"]["alerts"]["lead_days"]
    ax.hist(leads, bins=[float(x) for x in range(0, 62, 3)], color="tab:red", alpha=0.8)
    median = results["model"]["alerts"]["median_lead_days"]
    if median is not None:
        ax.axvline(median, color="black", linestyle="--", label=f"median {median:.1f} d")
        ax.legend()
    ax.set_xlabel("days from the first risk_raised to churn")
    ax.set_ylabel("churners")
    ax.set_title(f"Lead times, model {report['model']}")
    path = directory / "lead_times.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    return written
