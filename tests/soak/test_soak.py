"""The soak: real `serve` and `api` processes under many minutes of varied traffic
(`tests/utils/soak.py`), their memory sampled from inside (`tests/utils/soak_probe.py`).

`pytest -m soak tests/soak` (SOAK_MINUTES, default 15; SOAK_OUT keeps the probes' files,
default a temporary directory). Excluded from the default run: it takes the minutes it
says and both cores. Asserts that after warm-up no kind of object grows in both halves
of the rest of the run by more than a bounded cache of this traffic could (what a leak
does: it keeps growing), that serve's live objects stay level while no records come
(a quiet spell), that neither process's RSS passes 300 MB at any sample, and prints the
figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from healthscore_lab.devservices import Services
from tests.utils.soak import SoakOptions, read_samples, render, run_soak

pytestmark = pytest.mark.soak

# growth of one type of object over a half of the measured run that a bounded structure
# filling up under this traffic stays below (the decoder's key cache gains about 1,500
# organizations a round, the held states up to OWNED_STATES_MAX)
GROWTH_PER_HALF = 12_000
# growth of the live objects over a quiet spell (no records), the least of the samples
# of its last minute against the least of its second minute (the first drains what was
# produced before it): without full collections it was +43 a second
QUIET_GROWTH = 2_500
# issue 12's bound on a process's resident memory, over the whole run: the silence
# sweep's pages, every new organization of this traffic silent for days, set serve's
# peak until they were bounded
RSS_LIMIT_MB = 300.0


def _halves(path: Path, warmup: float) -> dict[str, tuple[int, int, int]]:
    samples = read_samples(path)
    after = [s for s in samples if s["t"] >= warmup]
    assert len(after) >= 3, "too few samples after warm-up"
    first, middle, last = after[0], after[len(after) // 2], after[-1]
    types = set(first["types"]) | set(last["types"])
    return {
        t: (first["types"].get(t, 0), middle["types"].get(t, 0), last["types"].get(t, 0))
        for t in types
    }


def _quiet_growth(path: Path, quiet_from: float, quiet_to: float) -> int:
    samples = read_samples(path)
    second: list[int] = [
        s["objects"] for s in samples if quiet_from + 60 <= s["t"] < quiet_from + 120
    ]
    last: list[int] = [s["objects"] for s in samples if quiet_to - 60 <= s["t"] < quiet_to]
    assert second and last, "too few samples in the quiet spell"
    return min(last) - min(second)


async def test_memory_stays_flat_under_varied_traffic(services: Services, tmp_path: Path) -> None:
    if services.postgres_server is None:
        pytest.skip("needs the embedded PostgreSQL to restart")
    minutes = max(10.0, float(os.environ.get("SOAK_MINUTES", "15")))
    out = Path(os.environ.get("SOAK_OUT", str(tmp_path)))
    # object counts only: tracemalloc slows serve down by half (the script keeps it)
    options = SoakOptions(minutes=minutes, out=out, tracemalloc=False)
    summary = await run_soak(options, services)
    print(render(summary))
    counts = summary["counts"]
    assert counts["rounds"] >= 2 and counts["api_requests"] > 0
    assert counts["erased"] > 0 and counts["rebalances"] > 0 and counts["postgres_restarts"] == 1
    warmup = min(options.minutes * 60 / 4, 300.0)
    for name in ("serve", "api"):
        pid = summary[name]["pid"]
        growing = {
            t: counts_
            for t, counts_ in _halves(out / f"probe-{pid}.jsonl", warmup).items()
            if counts_[1] - counts_[0] > GROWTH_PER_HALF
            and counts_[2] - counts_[1] > GROWTH_PER_HALF
        }
        assert not growing, f"{name}: grew in both halves after warm-up: {growing}"
        peak = max(summary[name]["rss_mb"])
        assert peak < RSS_LIMIT_MB, f"{name}: peak RSS {peak} MB"
    assert counts["quiet_to_s"] - counts["quiet_from_s"] >= 150
    quiet = _quiet_growth(
        out / f"probe-{summary['serve']['pid']}.jsonl", counts["quiet_from_s"], counts["quiet_to_s"]
    )
    assert quiet < QUIET_GROWTH, f"serve: live objects +{quiet} over a quiet spell"
