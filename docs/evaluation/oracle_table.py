"""The oracle table of docs/score-quality.md ("What the population allows") from
docs/evaluation/oracle-*.json (`evaluate --oracle`).

python docs/evaluation/oracle_table.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RUNS = (
    ("reference, held-out (seed 11)", "oracle-reference-held-out.json"),
    ("reference seed 12, all", "oracle-reference-seed12-all.json"),
    ("reference seed 13, all", "oracle-reference-seed13-all.json"),
    ("reference seed 14 (fresh), all", "oracle-reference-seed14-all.json"),
    ("shifted seed 2027, all", "oracle-shifted-all.json"),
    ("shifted seed 4242, all", "oracle-shifted-seed4242-all.json"),
    ("shifted seed 777, all", "oracle-shifted-seed777-all.json"),
    ("shifted seed 9001 (fresh), all", "oracle-shifted-seed9001-all.json"),
)


def _alerts(a: dict[str, Any]) -> str:
    return (
        f"{a['recall'] * 100:.0f}% / {a['median_lead_days']} / "
        f"{a['false_alerts_per_100_healthy_per_month']:.1f} / {a['precision']:.2f}"
    )


def main() -> None:
    reports = [
        (label, json.loads((HERE / name).read_text()))
        for label, name in RUNS
        if (HERE / name).exists()
    ]
    print(
        "| population (organizations judged) | v4: ROC AUC 30 d (SE) | oracle: ROC AUC 30 d "
        "(SE; 95%) | latent health alone | oracle - v4 (SE) | oracle 60 / 90 d "
        "| Brier 30 d v4 / oracle (skill) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, report in reports:
        results = report["results"]
        model, oracle = results["model"], results["oracle"]
        boot = oracle["bootstrap_auc_30d"]
        probability = oracle["auc"]["probability"]
        print(
            f"| {label} ({report['organizations']['judged']}) "
            f"| {model['auc']['churn_probability']['30']:.3f} ({boot['model']['se']:.3f}) "
            f"| **{probability['30']:.3f}** ({boot['oracle']['se']:.3f}; "
            f"{boot['oracle']['ci95'][0]:.3f}-{boot['oracle']['ci95'][1]:.3f}) "
            f"| {oracle['auc']['latent_health']['30']:.3f} "
            f"| {probability['30'] - model['auc']['churn_probability']['30']:+.3f} "
            f"({boot['oracle_minus_model']['se']:.3f}) "
            f"| {probability['60']:.3f} / {probability['90']:.3f} "
            f"| {model['brier_30d']:.4f} / {oracle['brier_30d']:.4f} "
            f"({model['brier_skill_vs_base_rate']:.2f} / "
            f"{oracle['brier_skill_vs_base_rate']:.2f}) |"
        )
    print()
    print(
        "| population | v4 | oracle, v4's alert settings | oracle, rule chosen on the "
        "training organizations | that rule |"
    )
    print("| --- | --- | --- | --- | --- |")
    for label, report in reports:
        results = report["results"]
        model, oracle = results["model"], results["oracle"]
        rule = oracle["alert_rule"]
        same = oracle.get("alerts_at_model_rule")
        print(
            f"| {label} | {_alerts(model['alerts'])} "
            f"| {_alerts(same) if same else '-'} | {_alerts(oracle['alerts'])} "
            f"| >= {rule['enter_probability']} held {rule['persist_days']:g} d |"
        )


if __name__ == "__main__":
    main()
