"""Screen of an alert rule that weighs the evidence of risk, not only its duration (issue 13).

v4 raises once the churn probability has held >= 0.3 for 96 h (or reached 0.75): an
organization at 0.31 and one at 0.7 need the same four days. On the shifted setting its
false alerts come from healthy organizations in dips; at v4's raises their probability
is lower than the churners' (median 0.52 against 0.66 on the shifted seed 2027,
`../alert-gating/screen.json`, `at_v4_raises`). The rule screened here accumulates the
excess of the probability over a base, hour by hour (a one-sided CUSUM):

    S <- max(0, S + (p_previous - base) * hours since the previous rescoring)

and raises when S >= K (probability-hours) and the probability is still >= the enter
threshold, or at once from `immediate_probability` (0.75). v4's rule is the special
case that resets S below the threshold and counts hours, not excess. The probability is
the one of the last rescoring, held until the next (the rescorings are the decision
points the service makes, which depend on the event log only).

One family, (base, K), chosen on the reference population's TRAINING organizations
only, by `healthscore fit`'s alert criterion (most training churners warned at least 14
days ahead, then the fewest false alerts, at most 3.5; the strictest among equals, K
then base); then judged on the populations of ../alert-gating/screen.py and on fresh
draws (seeds 15-24) of both settings, which no rule was chosen on.

    PYTHONPATH=services:services/lab python docs/evaluation/alert-evidence/screen.py \
        [--cache DIR] [--fresh 15-24] [--out docs/evaluation/alert-evidence/screen.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("gating", HERE.parent / "alert-gating" / "screen.py")
assert _spec is not None and _spec.loader is not None
gating = importlib.util.module_from_spec(_spec)
sys.modules["gating"] = gating
_spec.loader.exec_module(gating)


@dataclass(frozen=True)
class Evidence:
    base: float | None  # None: v4's own rule
    threshold: float  # K, probability-hours (v4: persist hours)
    enter: float = 0.3
    exit: float = 0.15
    immediate: float | None = 0.75
    cooldown_hours: float = 336.0

    @property
    def name(self) -> str:
        return "v4" if self.base is None else f"base {self.base} K {self.threshold:g}"


def raises(
    points: dict[int, list[Any]], orgs: list[int], rule: Evidence
) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []
    for org in orgs:
        in_episode, recovered_at = False, None
        evidence, above_since = 0.0, None
        last_at, last_p = None, None
        for p in points.get(org, []):
            if rule.base is not None and last_at is not None and last_p is not None:
                evidence = max(0.0, evidence + (last_p - rule.base) * (p.at - last_at) / 3600)
            last_at, last_p = p.at, p.probability
            if in_episode:
                if p.probability < rule.exit:
                    in_episode, recovered_at, evidence = False, p.at, 0.0
                continue
            immediate = rule.immediate is not None and p.probability >= rule.immediate
            if rule.base is None:
                if p.probability < rule.enter:
                    above_since = None
                    continue
                if above_since is None:
                    above_since = p.at
                held = p.at - above_since >= rule.threshold * 3600
            else:
                held = p.probability >= rule.enter and evidence >= rule.threshold
            if recovered_at is not None and p.at - recovered_at < rule.cooldown_hours * 3600:
                continue
            if held or immediate:
                in_episode, above_since, evidence = True, None, 0.0
                out.append((org, p.at))
    return out


def rules() -> list[Evidence]:
    out = [Evidence(None, 96.0)]
    for base in (0.15, 0.2, 0.25, 0.3):
        for k in (5, 10, 15, 20, 25, 30, 35, 40, 50, 60):
            out.append(Evidence(base, float(k)))
    return out


def _seeds(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--fresh", default="15-24")
    parser.add_argument("--out", type=Path, default=HERE / "screen.json")
    args = parser.parse_args()
    all_rules = rules()
    populations = [(s, seed, on) for s, seed, on, _ in gating.POPULATIONS]
    populations += [
        (setting, seed, "all")
        for setting in ("reference", "shifted")
        for seed in _seeds(args.fresh)
    ]
    training: dict[str, Any] = {}
    judged: dict[str, dict[str, Any]] = {}
    for setting, seed, on in populations:
        bt = gating.backtest(setting, seed, args.cache)
        points = gating.paths(bt)
        held = [gating.is_held_out(org) for org in bt.orgs]
        orgs = (
            [i for i, h in enumerate(held) if h] if on == "held-out" else list(range(len(bt.orgs)))
        )
        name = f"{setting} seed {seed}, {on}"
        judged[name] = {
            r.name: gating.figures(bt, raises(points, orgs, r), orgs) for r in all_rules
        }
        if setting == "reference" and seed == 11:
            train = [i for i, h in enumerate(held) if not h]
            training = {
                r.name: gating.figures(bt, raises(points, train, r), train) for r in all_rules
            }
        print(name, "v4:", judged[name]["v4"], flush=True)
    best: tuple[tuple[float, ...], str] | None = None
    for r in all_rules[1:]:
        t = training[r.name]
        false_rate = t["false_alerts_per_100_healthy_per_month"] or 0.0
        if false_rate > 3.5:
            continue
        key = (t["warned_at_least_14_days_ahead"], -false_rate, r.threshold, r.base or 0.0)
        if best is None or key > best[0]:
            best = (key, r.name)
    assert best is not None
    chosen = best[1]
    args.out.write_text(
        orjson.dumps(
            {"chosen_on_reference_training": chosen, "training": training, "judged": judged},
            option=orjson.OPT_INDENT_2,
        ).decode()
        + "\n"
    )
    print("chosen on the reference training organizations:", chosen)
    print("training v4:", training["v4"], "\ntraining chosen:", training[chosen])
    for name, by_rule in judged.items():
        for key in ("v4", chosen):
            f = by_rule[key]
            print(
                f"  {name:28s} {key:18s} alerted {f['recall']:.0%}"
                f" >=14d {f['warned_at_least_14_days_ahead']:3d}"
                f" lead {f['median_lead_days']} false {f['false_alerts_per_100_healthy_per_month']}"
                f" prec {f['precision']:.2f}"
            )


if __name__ == "__main__":
    main()
