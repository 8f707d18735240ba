"""Short form of the floor measurements (docs/performance.md, "Thirty-first session"):
`tests.bench.consume_cpu` reads back every record it produced through the real
embedded broker in each round and variant, and prints both variants' figures.
No speed assertion: the figures are for the report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[2]


def test_consume_cpu_reads_the_whole_log() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench.consume_cpu",
            "--events",
            "600",
            "--organizations",
            "40",
            "--rounds",
            "1",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT / "services"), str(ROOT / "services" / "lab"), str(ROOT)]
            ),
        },
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout)
    produced = re.search(r"^(\d+) records in 16 partitions", done.stdout, re.M)
    assert produced is not None and int(produced.group(1)) >= 600
    for variant in ("fetch ", "fetch + decode "):
        line = re.search(
            rf"^{re.escape(variant)}\s*consumer\s+([\d.]+) CPU us/record", done.stdout, re.M
        )
        assert line is not None, variant
        assert float(line.group(1)) > 0
