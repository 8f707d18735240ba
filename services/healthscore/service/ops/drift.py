"""The live population's usage volume against the one the live model's scales fit.

A model fitted on one population reads a population that uses the product less at
the same health as less healthy (docs/score-quality.md, "Adapting to a population's
usage volume"). This step samples organization states every
`USAGE_DRIFT_INTERVAL_SECONDS`, takes the sample's usage volume
(`core.scoring.volume`) as of its newest event, and sets
`healthscore_usage_volume_ratio{measure}` to it over the model's `usage_reference`
for each measure whose factor has points in the model (NaN for the others): a ratio
that stays far from 1 says the model's usage scales no longer fit, and
`healthscore adapt` on an export of the topics makes the model that does. A model
without a reference gets no gauge (the step is not run).
"""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import asyncpg

from healthscore.core.scoring.measure import measure
from healthscore.core.scoring.model import ScoreModel, UsageVolume
from healthscore.core.scoring.state import unpack_state
from healthscore.core.scoring.volume import (
    ACTIVE_DAYS,
    USAGE_SCALES,
    judged_measures,
    usage_volume,
    volume_ratios,
)
from healthscore.service.ops.metrics import Metrics
from healthscore.store import quality

# states decoded or measured between two yields to the event loop (a sample of 2,000
# takes 60-150 ms of CPU in all)
CHUNK = 250


class UsageDrift:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        metrics: Metrics,
        model: ScoreModel,
        reference: UsageVolume,
        sample_size: int,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._model = model
        self._reference = reference
        self._sample_size = sample_size
        self._judged = judged_measures(model)

    @classmethod
    def for_model(
        cls, pool: asyncpg.Pool[Any], metrics: Metrics, model: ScoreModel, sample_size: int
    ) -> UsageDrift | None:
        """The step for `model`, or None when it records no usage reference."""
        if model.usage_reference is None:
            return None
        return cls(pool, metrics, model, model.usage_reference, sample_size)

    async def step(self) -> None:
        start = uuid.uuid4()
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(quality.SAMPLE_STATES, start, self._sample_size)
            if len(rows) < self._sample_size:  # the key space ended: on from its start
                more = self._sample_size - len(rows)
                rows += await conn.fetch(quality.SAMPLE_STATES_BEFORE, start, more)
        # a row created empty (NULL) holds no state yet
        states = []
        for chunk in range(0, len(rows), CHUNK):
            for row in rows[chunk : chunk + CHUNK]:
                if row["state"] is not None:
                    state = unpack_state(row["state"])
                    if state.last_event_at is not None:
                        states.append(state)
            await asyncio.sleep(0)  # the consumer's batches go on meanwhile
        ratios: dict[str, float] = {}
        active = 0
        if states:
            as_of = max(s.last_event_at for s in states if s.last_event_at is not None)
            measures = []
            for chunk in range(0, len(states), CHUNK):
                measures += [measure(s, as_of, self._model) for s in states[chunk : chunk + CHUNK]]
                await asyncio.sleep(0)
            active = sum(1 for m in measures if m.silent_days <= ACTIVE_DAYS)
            ratios = volume_ratios(usage_volume(measures), self._reference)
        self._metrics.usage_volume_sampled.set(active)
        for name in USAGE_SCALES:
            ratio = ratios.get(name, math.nan) if name in self._judged else math.nan
            self._metrics.usage_volume_ratio.labels(name, self._model.version).set(ratio)
