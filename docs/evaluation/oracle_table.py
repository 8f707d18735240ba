"""The README's oracle table from docs/evaluation/oracle-*.json (`evaluate --oracle`).

python docs/evaluation/oracle_table.py
"""

from __future__ import annotations

import json
from pathlib import Path

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


def main() -> None:
    print(
        "| population (organizations judged) | ROC AUC 30 d: v4 (SE) / oracle (SE, 95%) "
        "/ latent health | oracle - v4 (SE) | oracle 60 / 90 d | Brier 30 d: v4 / oracle "
        "(skill v4 / oracle) | alerts v4 / oracle: alerted, lead, false alerts | oracle rule |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, name in RUNS:
        path = HERE / name
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        results = report["results"]
        model, oracle = results["model"], results["oracle"]
        boot = oracle["bootstrap_auc_30d"]
        m_alerts, o_alerts = model["alerts"], oracle["alerts"]
        rule = oracle["alert_rule"]

        def alerts(a: dict) -> str:
            return (
                f"{a['recall'] * 100:.0f}% / {a['median_lead_days']} / "
                f"{a['false_alerts_per_100_healthy_per_month']}"
            )

        print(
            f"| {label} ({report['organizations']['judged']}) "
            f"| {model['auc']['churn_probability']['30']:.3f} ({boot['model']['se']:.3f}) / "
            f"**{oracle['auc']['probability']['30']:.3f}** ({boot['oracle']['se']:.3f}, "
            f"{boot['oracle']['ci95'][0]:.3f}-{boot['oracle']['ci95'][1]:.3f}) / "
            f"{oracle['auc']['latent_health']['30']:.3f} "
            f"| {boot['oracle_minus_model']['mean']:+.3f} ({boot['oracle_minus_model']['se']:.3f}) "
            f"| {oracle['auc']['probability']['60']:.3f} / "
            f"{oracle['auc']['probability']['90']:.3f} "
            f"| {model['brier_30d']:.4f} / {oracle['brier_30d']:.4f} "
            f"({model['brier_skill_vs_base_rate']:.2f} / {oracle['brier_skill_vs_base_rate']:.2f}) "
            f"| {alerts(m_alerts)} ; {alerts(o_alerts)} "
            f"| >= {rule['enter_probability']} held {rule['persist_days']:g} d |"
        )


if __name__ == "__main__":
    main()
