"""The one loop the relay and the projector run in."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from healthscore.service.stopping import repeat_until_stopped


async def test_more_work_runs_again_at_once_and_failures_are_logged_and_retried() -> None:
    stop = asyncio.Event()
    calls: list[str] = []
    script = ["more", "more", "fail", "idle", "more", "stop"]

    async def step() -> bool:
        what = script[len(calls)]
        calls.append(what)
        if what == "fail":
            raise RuntimeError("broker away")
        if what == "stop":
            stop.set()
        return what == "more"

    with capture_logs() as logs:
        await asyncio.wait_for(repeat_until_stopped(step, stop, 0.001, "thing_failed"), 5)
    assert calls == script
    assert [e["event"] for e in logs] == ["thing_failed"]
    assert logs[0]["error"] == "RuntimeError"


async def test_a_stop_cuts_the_pause_short() -> None:
    stop = asyncio.Event()

    async def idle() -> bool:
        asyncio.get_running_loop().call_soon(stop.set)
        return False

    # an hour's interval: only the stop can end this quickly
    await asyncio.wait_for(repeat_until_stopped(idle, stop, 3600.0, "never"), 5)
