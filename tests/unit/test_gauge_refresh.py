"""The lag's refresh in the gauge step: bounded without cancelling, shared while it
runs, given up on once it outlives the client's own timeouts.

The broker is a stand-in here (a refresh that never answers): the control flow only.
The real service with its broker killed is tests/integration/test_gauges_in_outages.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from healthscore.service.ops import gauges
from healthscore.service.ops.gauges import GaugeRefresher, LagNotRefreshed


async def test_a_lag_refresh_without_an_answer_is_shared_then_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gauges, "LAG_REFRESH_TIMEOUT_SECONDS", 0.05)
    monkeypatch.setattr(gauges, "LAG_REFRESH_ABANDONED_AFTER_SECONDS", 0.3)
    refresher = GaugeRefresher(None, None, None, "g", [])  # type: ignore[arg-type]
    outbox_refreshes = 0
    started: list[asyncio.Task[Any]] = []

    async def outbox() -> None:
        nonlocal outbox_refreshes
        outbox_refreshes += 1

    async def never_answers() -> None:
        started.append(asyncio.current_task())  # type: ignore[arg-type]
        await asyncio.Event().wait()

    refresher.refresh_outbox = outbox  # type: ignore[method-assign]
    refresher.refresh_distribution = outbox  # type: ignore[method-assign]
    refresher._refresh_lag = never_answers  # type: ignore[method-assign]
    for _ in range(3):  # each step ends at the bound: the outbox gauges go on
        with pytest.raises(LagNotRefreshed, match="no answer"):
            await asyncio.wait_for(refresher.refresh(), 5)
    assert len(started) == 1 and not started[0].done()  # one run, waited on again
    await asyncio.sleep(0.3)
    with pytest.raises(LagNotRefreshed):
        await asyncio.wait_for(refresher.refresh(), 5)  # past the limit: given up
    await asyncio.sleep(0)
    assert started[0].cancelled()
    with pytest.raises(LagNotRefreshed):
        await asyncio.wait_for(refresher.refresh(), 5)
    assert len(started) == 2  # a new run, after the one given up
    assert outbox_refreshes >= 5
    await refresher.close()
    await asyncio.sleep(0)
    assert started[1].cancelled()
