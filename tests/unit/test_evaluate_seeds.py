"""`healthscore evaluate --seeds`: a model judged over several draws of one setting."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from healthscore_lab.evaluation.command import add_evaluate_arguments, run_evaluate
from healthscore_lab.evaluation.seeds import parse_seeds, summarize


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return parser.parse_args(list(argv))


def test_seeds_are_ranges_and_lists_in_the_order_given_each_once() -> None:
    assert parse_seeds("15-18") == [15, 16, 17, 18]
    assert parse_seeds("9, 3-5,4,12") == [9, 3, 4, 5, 12]
    assert parse_seeds("7") == [7]
    for bad in ("", "3-1", "a-b", "1,,2", "1-"):
        with pytest.raises(ValueError):
            parse_seeds(bad)


def _report(auc: float, lead: float, oracle: float | None, baselines: float) -> dict[str, Any]:
    report: dict[str, Any] = {
        "targets": {
            "auc_30d": {"value": auc, "target": ">= 0.93", "met": auc >= 0.93},
            "brier_below_baselines": {
                "value": 0.04,
                "target": f"< {baselines}",
                "met": baselines > 0.04,
            },
            "median_lead_days": {
                "value": lead,
                "target": ">= 14.0",
                "met": None if math.isnan(lead) else lead >= 14.0,
            },
        },
        "results": {},
    }
    if oracle is not None:
        report["results"]["oracle"] = {"auc": {"probability": {"30": oracle}}}
    return report


def test_each_target_gets_its_distribution_and_the_draws_that_missed_it() -> None:
    reports = [
        _report(0.92, 16.0, 0.96, 0.05),
        _report(0.95, float("nan"), 0.97, 0.03),
        _report(0.94, 12.0, 0.99, 0.06),
    ]
    for report in reports[1:2]:  # a draw without alerts has no lead time
        report["targets"]["median_lead_days"]["value"] = None
    summary = summarize([4, 8, 15], reports)
    auc = summary["targets"]["auc_30d"]
    assert (auc["met_on"], auc["judged_on"], auc["missed_seeds"]) == (2, 3, [4])
    assert auc["mean"] == pytest.approx(0.9367, abs=1e-4)
    assert auc["sd"] == pytest.approx(0.01528, abs=1e-4)
    assert auc["standard_error"] == pytest.approx(0.01528 / math.sqrt(3), abs=1e-4)
    assert (auc["min"], auc["max"]) == (0.92, 0.95)
    lead = summary["targets"]["median_lead_days"]
    assert (lead["draws"], lead["met_on"], lead["judged_on"], lead["missed_seeds"]) == (
        2,
        1,
        2,
        [15],
    )
    assert lead["mean"] == 14.0
    # each draw's own baselines: no single threshold to state
    brier = summary["targets"]["brier_below_baselines"]
    assert brier["target"] == "< each draw's baselines"
    assert (brier["met_on"], brier["missed_seeds"]) == (2, [8])
    assert summary["oracle_auc_30d"]["mean"] == pytest.approx(0.9733, abs=1e-4)
    assert summary["oracle_auc_30d"]["below_target_on"] == 0
    gap = summary["gap_to_oracle_auc_30d"]
    assert (gap["min"], gap["max"]) == pytest.approx((0.02, 0.05))
    assert "oracle_auc_30d" not in summarize([1], [_report(0.9, 15.0, None, 0.05)])


def test_every_draw_is_the_single_seed_evaluation_of_that_seed(tmp_path: Path) -> None:
    small = ("--simulate", "--organizations", "40", "--days", "30", "--judge", "all")
    assert run_evaluate(_args(*small, "--seeds", "5-6", "--json", str(tmp_path / "s.json"))) == 0
    both = orjson.loads((tmp_path / "s.json").read_bytes())
    assert both["summary"]["seeds"] == [5, 6]
    for seed, report in zip((5, 6), both["reports"], strict=True):
        out = tmp_path / f"{seed}.json"
        assert run_evaluate(_args(*small, "--seed", str(seed), "--json", str(out))) == 0
        assert report == orjson.loads(out.read_bytes())
    first, second = (r["results"]["model"]["brier_30d"] for r in both["reports"])
    assert first != second  # two draws, not one twice


@pytest.mark.parametrize(
    "extra",
    [
        ("--seeds", "1-2", "--seed", "3", "--simulate"),
        ("--seeds", "1-2", "--events", "e.jsonl", "--labels", "l.csv"),
        ("--seeds", "2-1", "--simulate"),
    ],
    ids=["with-seed", "not-simulated", "empty-range"],
)
def test_seeds_refuse_what_they_cannot_mean(
    extra: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_evaluate(_args(*extra)) == 2
    assert "error:" in capsys.readouterr().err
