"""The lab's children (broker, benchmark services) go when the process that started
them is killed outright, instead of running on under the next measurement."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
@pytest.mark.parametrize("preexec", ["die_with_parent", "None"])
def test_a_child_started_to_die_with_its_parent_goes_when_the_parent_is_killed(
    preexec: str,
) -> None:
    parent_code = (
        "import subprocess, sys, time\n"
        "from healthscore_lab.devservices import die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        f" preexec_fn={preexec})\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("services", "services/lab")),
    }
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, env=env, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait(10)
        # the signal comes at once; the control is given a second to show it runs on
        deadline = time.monotonic() + (10 if preexec == "die_with_parent" else 1)
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        if preexec == "die_with_parent":
            assert _gone(child)
        else:  # the control: without it the child runs on
            assert not _gone(child)
    finally:
        if not _gone(child):
            os.kill(child, 9)
