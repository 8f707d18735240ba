"""`healthscore replay` killed (SIGKILL) in the middle, then run again on the same
database: without `--resume` the second run must refuse clearly, in one line saying
what to do, and change nothing; with it, it goes on to the end of the log."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import pytest

from tests.utils.harness import ServiceProcess, fetchval, make_topics, service_settings, wait_for
from tests.utils.scenarios import produce_stream, simulated_stream

pytestmark = pytest.mark.faults


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_a_replay_killed_half_way_is_refused_on_the_same_database(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    await produce_stream(kafka_bootstrap, topics, simulated_stream(organizations=60, events=3000))
    env = ServiceProcess(
        service_settings(migrated_database, kafka_bootstrap, topics, batch_max_records=20)
    ).env()
    command = [sys.executable, "-m", "healthscore.cli", "replay", "--no-sweep"]
    first = _start(command, env)
    try:
        await wait_for(
            migrated_database, "SELECT count(*) FROM organization_state", lambda n: n > 0, 120
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    # the kill landed half-way: the replay was still running, its log not all applied
    # (else the refusal and the resumed run below would prove nothing)
    assert first.returncode == -signal.SIGKILL
    before = await fetchval(migrated_database, "SELECT count(*) FROM processed_events")
    assert 0 < before < 3000, before

    again = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    output = again.stdout + again.stderr
    assert again.returncode == 2, output
    assert "Traceback" not in output, output
    errors = [line for line in again.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert "replay needs an empty database" in errors[0], errors
    assert "a new empty database" in errors[0] and "--resume" in errors[0], errors
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == before

    resumed = await asyncio.to_thread(
        subprocess.run,
        [*command, "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.splitlines()[-1].startswith("replayed 3000 events"), resumed.stdout
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 3000
