"""`healthscore evaluate` and `healthscore fit`: arguments, inputs, outputs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from healthscore.core.scoring.model import (
    DEFAULT_MODEL_PATH,
    check_version,
    load_model,
    shipped_models,
)
from healthscore.errors import HealthscoreError, ModelConfigError


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_argument_group("input (one of)")
    source.add_argument(
        "--simulate",
        nargs="?",
        const="reference",
        choices=("reference", "shifted"),
        help="simulate a labelled population (default setting: reference)",
    )
    source.add_argument("--events", type=Path, help='JSON lines {"topic": ..., "value": {...}}')
    p.add_argument("--labels", type=Path, help="CSV organization_id,churned_at (with --events)")
    p.add_argument(
        "--profiles",
        type=Path,
        help="CSV organization_id,created_at,milestones (name=time;...), optional",
    )
    p.add_argument(
        "--keep-stray-events",
        action="store_true",
        help="with --events: keep events more than 30 days outside the bulk of the log's "
        "times (refused by default: a producer's clock a year off stretches every "
        "organization's as-of points)",
    )
    p.add_argument(
        "--labels-until",
        help="RFC 3339 time up to which churn is known (default: the last event, or the "
        "latest churn in the labels if later, and not after now)",
    )
    sim = p.add_argument_group("simulation settings (with --simulate)")
    sim.add_argument("--organizations", type=int, help="default: the setting's (300)")
    sim.add_argument("--days", type=int, help="stream length (reference 90, shifted 120)")
    sim.add_argument("--seed", type=int, help="default: the setting's")
    p.add_argument(
        "--no-profiles",
        action="store_true",
        help="ignore the profiles (account creation, milestones before the stream)",
    )
    p.add_argument(
        "--write-log",
        type=Path,
        metavar="DIR",
        help="with --simulate: also write events.jsonl, labels.csv, profiles.csv and "
        "labels_until.txt (the --labels-until that evaluates those files as --simulate "
        "did) there",
    )


def _log(args: argparse.Namespace, labels_required: bool = True) -> Any:
    from healthscore_lab.evaluation.log import EvaluationInputError, from_population, load_log

    if (args.simulate is None) == (args.events is None):
        raise EvaluationInputError("give exactly one of --simulate or --events")
    if args.events is not None:
        if args.labels is None and labels_required:
            raise EvaluationInputError("--events needs --labels")
        if args.write_log is not None:
            raise EvaluationInputError("--write-log goes with --simulate (--events is a log)")
        until = None
        if args.labels_until:
            until = _labels_until(args.labels_until)
        return load_log(
            args.events,
            args.labels,
            None if args.no_profiles else args.profiles,
            until,
            keep_stray_events=args.keep_stray_events,
        )
    from healthscore_lab.simulator.labelled import (
        PRESETS,
        generate_population,
        iter_jsonl,
        labels_csv,
        profiles_csv,
    )

    config = PRESETS[args.simulate]()
    overrides = {
        name: value
        for name, value in (
            ("organizations", args.organizations),
            ("days", args.days),
            ("seed", args.seed),
        )
        if value is not None
    }
    config = replace(config, **overrides)
    # its events judged "not in the future" as the service judges them, and its labels
    # known up to `labels_until`: a simulation running past today lost its last events
    # and wrote a --labels-until that --labels-until refuses (review 37a L5)
    longest = (datetime.now(UTC) - config.start).days - config.follow_up_days
    if config.days > longest:
        from healthscore_lab.evaluation.log import EvaluationInputError

        raise EvaluationInputError(
            f"--days {config.days}: the simulation starts {config.start.date().isoformat()} "
            f"and knows its churns {config.follow_up_days} days after its last day, so "
            f"--days {longest} at most today"
        )
    population = generate_population(config)
    if args.write_log is not None:
        args.write_log.mkdir(parents=True, exist_ok=True)
        with (args.write_log / "events.jsonl").open("wb") as handle:
            for line in iter_jsonl(population):
                handle.write(line)
        (args.write_log / "labels.csv").write_text(labels_csv(population))
        (args.write_log / "profiles.csv").write_text(profiles_csv(population))
        # how far the simulated labels are known: `--events` with these files and this
        # `--labels-until` evaluates as `--simulate` did
        (args.write_log / "labels_until.txt").write_text(
            datetime.fromtimestamp(population.labels_until, UTC).isoformat() + "\n"
        )
    log = from_population(population, use_profiles=not args.no_profiles)
    log.source = f"simulated {args.simulate} " + ", ".join(
        f"{k}={v}" for k, v in {"seed": population.config.seed, **overrides}.items()
    )
    return log


def _labels_until(text: str) -> float:
    """--labels-until: an RFC 3339 time with its offset (without one it would be read in
    the machine's zone), not after now (nobody knows yet who churns later)."""
    from healthscore_lab.evaluation.log import EvaluationInputError

    try:
        until = datetime.fromisoformat(text)
    except ValueError:
        raise EvaluationInputError(f"--labels-until {text!r} is not an RFC 3339 time") from None
    if until.tzinfo is None:
        raise EvaluationInputError("--labels-until needs an offset (e.g. 2026-03-01T00:00:00Z)")
    if until > datetime.now(UTC):
        raise EvaluationInputError(
            f"--labels-until {until.isoformat()} is after now: the labels can be complete "
            "only up to now"
        )
    return until.timestamp()


def _say_log(log: Any, say: Any) -> None:
    """What the log holds: its events, those rejected as the service would (the first
    few with their reasons), repeats, organizations, and how far the labels are known."""
    repeats = f", {log.duplicates} repeats counted once" if log.duplicates else ""
    say(
        f"{len(log.events)} events ({log.rejected} rejected{repeats}), "
        f"{len(log.churned_at)} organizations, labels known until "
        f"{datetime.fromtimestamp(log.labels_until, UTC).isoformat()}"
    )
    for rejection in log.rejections:
        say(f"  rejected: {rejection}")
    if log.rejected > len(log.rejections):
        say(f"  and {log.rejected - len(log.rejections)} more rejected")
    for kind, ids in log.mismatches.items():
        sample = ", ".join(ids[:MISMATCH_SAMPLE]) + (", ..." if len(ids) > MISMATCH_SAMPLE else "")
        say(f"  {len(ids)} {_mismatch_said(kind)}: {sample}")


MISMATCH_SAMPLE = 3


def _mismatch_said(kind: str) -> str:
    """How `_say_log` names a disagreement between the labels and the events."""
    from healthscore_lab.evaluation import log as kinds

    return {
        kinds.WITHOUT_EVENTS: "labelled organizations have no usage or support event in the "
        "log: left out, not judged (the labels of another shard or system?)",
        kinds.CHURNED_BEFORE_EVENTS: "organizations churned before their first event: left "
        "out with their events (a churn of an earlier contract? leave churned_at empty, or "
        "give the churn that followed the events)",
        kinds.WITHOUT_LABEL: "organizations with events have no label row: taken as retained "
        "(a labels file may list the churns alone; a partial one counts churners as retained)",
    }[kind]


def _progress(quiet: bool) -> Any:
    started = time.monotonic()

    def say(message: str) -> None:
        if not quiet:
            print(f"[{time.monotonic() - started:5.0f}s] {message}", file=sys.stderr, flush=True)

    return say


def run_evaluate(args: argparse.Namespace) -> int:
    from healthscore_lab.evaluation.compare import compare_episodes
    from healthscore_lab.evaluation.evaluate import evaluate
    from healthscore_lab.evaluation.replay import run_backtest
    from healthscore_lab.evaluation.report import render_table, write_plots

    say = _progress(args.json == "-")
    if args.oracle and args.simulate is None:
        print(
            "error: --oracle needs --simulate (only the simulator knows the truth)", file=sys.stderr
        )
        return 2
    if args.seeds is not None:
        return _evaluate_seeds(args, say)
    try:
        model = load_model(args.model or DEFAULT_MODEL_PATH)
        candidate = load_model(args.candidate) if args.candidate else None
        log = _log(args)
    except (HealthscoreError, ModelConfigError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _say_log(log, say)
    say(f"replaying under {model.version}")
    try:
        bt, report = _backtest_and_report(args, log, model, say)
        output: dict[str, Any] = {"report": report}
        if candidate is not None:
            say(f"replaying under the candidate {candidate.version}")
            candidate_bt = run_backtest(log, candidate)
            output["candidate_report"] = evaluate(
                candidate_bt, candidate, source=log.source, organizations=args.judge
            )
            output["episodes"] = compare_episodes(bt, candidate_bt, organizations=args.judge)
    except ValueError as exc:  # a log too short or labels too early to judge anything
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.plots is not None:
        for path in write_plots(bt, report, args.plots):
            say(f"wrote {path}")
    if args.json is not None and _write_json(
        args.json, output if candidate is not None else report, say
    ):
        return 0
    print(render_table(report), end="")
    if candidate is not None:
        print()
        print(render_table(output["candidate_report"]), end="")
        episodes = output["episodes"]
        print(
            f"\nepisodes, {candidate.version} against {model.version}: "
            f"{episodes['added']} added ({episodes['added_before_a_churn']} before a churn), "
            f"{episodes['dropped']} dropped ({episodes['dropped_before_a_churn']} before a "
            f"churn), {episodes['moved']} moved ({episodes['moved_earlier']} earlier, median "
            f"{episodes['median_move_days']} days), "
            f"{episodes['organizations_changed']} organizations changed"
        )
    return 0


def _write_json(where: str, value: Any, say: Any) -> bool:
    """Write `value` as JSON to the file `where`, or to stdout for '-' (True: then it is
    the whole output)."""
    text = json.dumps(value, indent=1)
    if where == "-":
        print(text)
        return True
    Path(where).write_text(text + "\n")
    say(f"wrote {where}")
    return False


def _backtest_and_report(
    args: argparse.Namespace, log: Any, model: Any, say: Any
) -> tuple[Any, dict[str, Any]]:
    """The log replayed under `model` and its report (with the oracle's figures when
    asked for and the log is simulated)."""
    from healthscore_lab.evaluation.evaluate import evaluate
    from healthscore_lab.evaluation.replay import run_backtest

    bt = run_backtest(log, model)
    oracle = None
    if args.oracle and log.population is not None:
        from healthscore_lab.evaluation.oracle import oracle_forecasts

        say(f"the oracle's forecasts ({args.oracle_paths} paths per snapshot)")
        oracle = oracle_forecasts(bt, log.population, paths=args.oracle_paths)
    return bt, evaluate(bt, model, source=log.source, organizations=args.judge, oracle=oracle)


def _evaluate_seeds(args: argparse.Namespace, say: Any) -> int:
    """`evaluate --seeds`: the model judged on each draw, and each target's distribution."""
    from healthscore_lab.evaluation.seeds import parse_seeds, render_summary, summarize

    refused = [
        flag
        for flag, given in (
            ("--events", args.events is not None),
            ("--seed", args.seed is not None),
            ("--candidate", args.candidate is not None),
            ("--plots", args.plots is not None),
            ("--write-log", args.write_log is not None),
        )
        if given
    ]
    if args.simulate is None or refused:
        print(
            "error: --seeds needs --simulate, and goes with none of --events, --seed, "
            "--candidate, --plots, --write-log"
            + (f" (given: {', '.join(refused)})" if refused else ""),
            file=sys.stderr,
        )
        return 2
    try:
        seeds = parse_seeds(args.seeds)
        model = load_model(args.model or DEFAULT_MODEL_PATH)
    except (ModelConfigError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reports = []
    for seed in seeds:
        say(f"seed {seed}: simulating and replaying under {model.version}")
        log = _log(argparse.Namespace(**{**vars(args), "seed": seed}))
        reports.append(_backtest_and_report(args, log, model, say)[1])
    summary = summarize(seeds, reports)
    if args.json is not None and _write_json(
        args.json, {"summary": summary, "reports": reports}, say
    ):
        return 0
    print(render_summary(summary, reports), end="")
    return 0


def _current_and_out(args: argparse.Namespace) -> tuple[Any, dict[str, Any], Path] | None:
    """The current model (--model), its config, and where the new version goes; None
    (after saying why) when it cannot be loaded or the new one would replace it."""
    try:
        path = args.model or DEFAULT_MODEL_PATH
        current = load_model(path)
        current_config = orjson.loads(Path(path).read_bytes())
    except (HealthscoreError, ModelConfigError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    version = args.version
    try:
        check_version(version)  # before the fit, not after it
    except ModelConfigError as exc:
        print(f"error: --{exc}", file=sys.stderr)
        return None
    shipped = shipped_models()
    if version in shipped:
        # the service, a promotion and the dashboard take that version for the shipped
        # model (and the file beside the shipped ones was overwritten)
        print(
            f"error: --version {version} is the version of a model shipped with healthscore "
            f"({', '.join(sorted(shipped))}): give the new model a version of its own",
            file=sys.stderr,
        )
        return None
    # beside --model; the shipped model's directory is the installed package's, where a
    # new file would be taken for a shipped model: the working directory then
    name = f"health_model.{version}.json"
    out: Path = args.out or (Path(name) if args.model is None else Path(path).with_name(name))
    if version == current.version or out.resolve() == Path(path).resolve():
        # a derived model under its source's name would be taken for it
        print(
            f"error: --version {version} would replace the current model {current.version} "
            f"({path}): give the new model a version of its own",
            file=sys.stderr,
        )
        return None
    return current, current_config, out


def _write_model(
    out: Path, config: dict[str, Any], lines: list[str], current_config: dict[str, Any]
) -> None:
    config["changelog"] = [*lines, *current_config.get("changelog", [])]
    write_whole(out, orjson.dumps(config, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"\nwrote {out}")


def write_whole(out: Path, data: bytes) -> None:
    """`data` under `out` whole or not at all: written beside it, flushed to disk, then
    renamed over it. A crash (or a full disk) mid-write leaves the previous file, which
    MODEL_PATH may name, instead of a half-written model that the service cannot load."""
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    # the rename itself durable too
    directory = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def run_fit(args: argparse.Namespace) -> int:
    from healthscore_lab.evaluation.fit import SIZE_FACTORS, FitSettings, fit, recalibrate
    from healthscore_lab.evaluation.report import render_table
    from healthscore_lab.evaluation.vector import FACTORS

    say = _progress(False)
    unknown = sorted(set(args.exclude) - {name for _component, name in FACTORS})
    if unknown:
        print(f"error: --exclude: unknown factor(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    if args.calibration_only and (args.exclude or args.include_size_factors):
        print(
            "error: --calibration-only keeps every weight: --exclude and "
            "--include-size-factors do not apply",
            file=sys.stderr,
        )
        return 2
    loaded = _current_and_out(args)
    if loaded is None:
        return 2
    current, current_config, out = loaded
    version = args.version
    size = () if args.include_size_factors else SIZE_FACTORS
    settings = FitSettings(exclude=size + tuple(args.exclude))
    try:
        log = _log(args)
        _say_log(log, say)
        if args.calibration_only:
            result = recalibrate(log, current, current_config, version, settings, progress=say)
        else:
            result = fit(log, current, current_config, version, settings, progress=say)
    except (HealthscoreError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render_table(result.current), end="")
    print()
    print(render_table(result.candidate), end="")
    if not result.accepted and not args.force:
        print(f"\nrefused: {'; '.join(result.reasons)} (--force writes it anyway)")
        return 1
    config = result.config
    what = (
        f"{current.version}'s weights kept; its churn calibration and alert settings refitted"
        if args.calibration_only
        else "fitted"
    )
    line = (
        f"{version}: {what} by `healthscore fit` on {log.source} "
        f"(training organizations only); held-out figures in `evaluation`."
    )
    _write_model(out, config, [line, *_forced(config, result), *args.note], current_config)
    return 0


def _forced(config: dict[str, Any], result: Any) -> list[str]:
    """A model written with --force past a refusal says so, in its `evaluation` (which
    the dashboard shows admins) and its changelog: it read like one accepted (37a L3)."""
    if result.accepted:
        return []
    config.setdefault("evaluation", {})["forced_past"] = list(result.reasons)
    return [f"written with --force past the refusal: {'; '.join(result.reasons)}."]


def run_adapt(args: argparse.Namespace) -> int:
    from healthscore_lab.evaluation.adapt import adapt
    from healthscore_lab.evaluation.report import render_table

    say = _progress(False)
    loaded = _current_and_out(args)
    if loaded is None:
        return 2
    current, current_config, out = loaded
    try:
        log = _log(args, labels_required=False)
        _say_log(log, say)
        result = adapt(log, current, current_config, args.version, progress=say)
    except (HealthscoreError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.candidate is not None and result.current is not None:
        print(render_table(result.current), end="")
        print()
        print(render_table(result.candidate), end="")
    else:
        print(
            "the log has no churn labels: the adapted model is written unjudged (`healthscore "
            "evaluate --candidate` with labels, or SHADOW_MODEL_PATH in the service, shows "
            "what it changes)"
        )
    if not result.accepted and not args.force:
        print(f"\nrefused: {'; '.join(result.reasons)} (--force writes it anyway)")
        return 1
    ratios = ", ".join(f"{name} {ratio:.3f}" for name, ratio in result.ratios.items())
    judged = "held-out figures" if result.candidate is not None else "unjudged (no labels)"
    line = (
        f"{args.version}: {current.version}'s usage scales adapted by `healthscore adapt` to "
        f"the usage volume of {log.source} (training organizations' events only, no labels): "
        f"times {ratios}; {judged} in `evaluation`."
    )
    forced = _forced(result.config, result)
    _write_model(out, result.config, [line, *forced, *args.note], current_config)
    return 0


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    add_input_arguments(p)
    p.add_argument("--model", type=Path, help="model config (default: the shipped one)")
    p.add_argument(
        "--candidate",
        type=Path,
        help="a second model: its figures too, and the alert episodes it adds, drops, moves",
    )
    p.add_argument(
        "--judge",
        choices=("held_out", "all"),
        default="held_out",
        help="organizations the figures are computed on: the held-out ones (default), or "
        "all (only for a population the model was not fitted on)",
    )
    p.add_argument(
        "--seeds",
        metavar="SEEDS",
        help="with --simulate: judge the model on several draws of the setting (e.g. 15-24 "
        "or 3,5,8; with --judge all for a setting it was not fitted on) and report each "
        "target's distribution over them, and how many draws met it",
    )
    p.add_argument("--json", metavar="FILE", help="write the report as JSON ('-': stdout only)")
    p.add_argument("--plots", type=Path, metavar="DIR", help="write PNG plots there")
    p.add_argument(
        "--oracle",
        action="store_true",
        help="with --simulate: also the figures of the simulator's true churn probability "
        "and latent health (the ceiling of any score; evaluation/oracle.py)",
    )
    p.add_argument(
        "--oracle-paths",
        type=int,
        default=256,
        metavar="N",
        help="Monte Carlo paths per snapshot for the oracle's probability (default 256)",
    )


def _add_new_version_arguments(p: argparse.ArgumentParser) -> None:
    add_input_arguments(p)
    p.add_argument("--model", type=Path, help="the current model (default: the shipped one)")
    p.add_argument("--version", required=True, help="the new version, e.g. v3")
    p.add_argument(
        "--out",
        type=Path,
        help="default: health_model.<version>.json beside --model (without --model: in the "
        "working directory)",
    )
    p.add_argument("--force", action="store_true", help="write it even if it evaluates worse")
    p.add_argument("--note", action="append", default=[], help="a changelog line (repeatable)")


def add_adapt_arguments(p: argparse.ArgumentParser) -> None:
    _add_new_version_arguments(p)


def add_fit_arguments(p: argparse.ArgumentParser) -> None:
    _add_new_version_arguments(p)
    p.add_argument(
        "--include-size-factors",
        action="store_true",
        help="also fit the factors that measure a customer's size (see evaluation/fit.py)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="FACTOR",
        help="leave this factor out of the fit too, its weight 0 (repeatable)",
    )
    p.add_argument(
        "--calibration-only",
        action="store_true",
        help="keep the current model's weights, shapes and ceilings; refit only the churn "
        "calibration and the alert settings on this log (a population whose habits differ "
        "from the one the weights were fitted on)",
    )
