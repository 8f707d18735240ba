"""Run `healthscore <command>` with a memory probe beside it (the soak harness's child).

`python -m tests.utils.soak_probe serve ...` (or `api ...`): a daemon thread writes one
JSON line every SOAK_SAMPLE_SECONDS to $SOAK_OUT/probe-<pid>.jsonl: seconds since the
start, RSS (kB), the count of live objects tracked by the collector by type (every type
with at least SOAK_MIN_COUNT of them), the live contexts and the variables they hold.
tracemalloc starts at SOAK_TRACE_AT seconds (only what is allocated from then on is
traced), takes a first snapshot at SOAK_TRACE_FIRST and a second at SOAK_TRACE_SECOND;
the growth sites between the two go to $SOAK_OUT/tracemalloc-<pid>.txt. Nothing of the
service is changed.
"""

from __future__ import annotations

import collections
import contextvars
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from typing import Any

STARTED = time.monotonic()
OUT = os.environ.get("SOAK_OUT", "/tmp")
SAMPLE = float(os.environ.get("SOAK_SAMPLE_SECONDS", "20"))
MIN_COUNT = int(os.environ.get("SOAK_MIN_COUNT", "50"))
TRACE_AT = float(os.environ.get("SOAK_TRACE_AT", "0"))  # 0: no tracemalloc
TRACE_FIRST = float(os.environ.get("SOAK_TRACE_FIRST", "0"))
TRACE_SECOND = float(os.environ.get("SOAK_TRACE_SECOND", "0"))
# a full collection by the probe at this time (0: never): what it frees is in the sample
COLLECT_AT = float(os.environ.get("SOAK_COLLECT_AT", "0"))


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def type_counts() -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for o in gc.get_objects():
        t = type(o)
        counts[f"{t.__module__}.{t.__qualname__}"] += 1
    return {k: v for k, v in counts.items() if v >= MIN_COUNT}


def contexts() -> dict[str, int]:
    """Live contexts, and how many of them hold each context variable (by name)."""
    held: collections.Counter[str] = collections.Counter()
    for o in gc.get_objects():
        if isinstance(o, contextvars.Context):
            held["(contexts)"] += 1
            for var in o:
                held[var.name] += 1
    return dict(held)


def sample() -> dict[str, Any]:
    counts = type_counts()
    return {
        "t": round(time.monotonic() - STARTED, 1),
        "rss_kb": rss_kb(),
        "objects": sum(counts.values()),
        "gc_counts": gc.get_count(),
        "generations": [len(gc.get_objects(g)) for g in range(3)],
        "types": counts,
        "contexts": contexts(),
    }


def write_growth(first: tracemalloc.Snapshot, second: tracemalloc.Snapshot) -> None:
    filters = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
    first, second = first.filter_traces(filters), second.filter_traces(filters)
    with open(f"{OUT}/tracemalloc-{os.getpid()}.txt", "w") as f:
        f.write(
            f"growth from t={TRACE_FIRST:g}s to t={TRACE_SECOND:g}s (traced from {TRACE_AT:g}s)\n"
        )
        for kind in ("lineno", "traceback"):
            f.write(f"\n== top 25 by {kind}\n")
            for stat in second.compare_to(first, kind)[:25]:
                f.write(
                    f"{stat.size_diff / 1024:+.1f} KiB {stat.count_diff:+d} blocks "
                    f"(now {stat.size / 1024:.1f} KiB {stat.count} blocks)\n"
                )
                frames = stat.traceback.format() if kind == "traceback" else []
                f.write("".join(f"    {line}\n" for line in frames[-16:]))
                if kind == "lineno":
                    f.write(f"    {stat.traceback[0].filename}:{stat.traceback[0].lineno}\n")


def run() -> None:
    path = f"{OUT}/probe-{os.getpid()}.jsonl"
    first: tracemalloc.Snapshot | None = None
    done = collected = False
    while True:
        time.sleep(SAMPLE)
        now = time.monotonic() - STARTED
        if TRACE_AT and now >= TRACE_AT and not tracemalloc.is_tracing() and not done:
            tracemalloc.start(25)
        if TRACE_FIRST and now >= TRACE_FIRST and first is None and tracemalloc.is_tracing():
            first = tracemalloc.take_snapshot()
        if TRACE_SECOND and now >= TRACE_SECOND and first is not None and not done:
            write_growth(first, tracemalloc.take_snapshot())
            first = None
            done = True
            tracemalloc.stop()
        line = sample()
        if COLLECT_AT and now >= COLLECT_AT and not collected:
            collected = True
            line["collected"] = gc.collect()
            line["after_collection"] = sample()
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    threading.Thread(target=run, name="soak-probe", daemon=True).start()
    from healthscore.cli import main

    sys.exit(main(sys.argv[1:]))
