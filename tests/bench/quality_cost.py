"""What score quality costs in the running service: shadow walks, promotion, labelling.

    PYTHONPATH=services:services/lab python -m tests.bench.quality_cost [--organizations 20000]

On a fresh database of the embedded PostgreSQL (or DATABASE_URL's server), it
writes the states of N organizations computed by the pure core from the
simulator's stream (`tests.bench.core_cpu`, 5 events per organization), then
times, with the service's own classes on a one-connection pool (so that the
PostgreSQL backend's CPU can be read from /proc):

- the shadow scorer's first walk (every organization changed: v1 scored beside
  the live model) and a walk with nothing changed;
- the read model under v1, then a promotion to the live model (queue pages +
  projector) until no organization is left on v1;
- the outcome labeller over one raise per organization (10% of them churned by
  label): the first labelling (inserts), a second one (no change), the figures;
- the usage drift gauge's step: a sample of 2,000 states (per sampled organization).

Each figure: wall seconds, this process's CPU and the backend's CPU, per
organization (or per alert). No assertion: the figures are for the report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from healthscore.core.alignment import align
from healthscore.core.effects import compute_batch_effects
from healthscore.core.interactions import InteractionRecord
from healthscore.core.scoring.model import default_model, v1_model
from healthscore.core.scoring.state import OrganizationState, pack_state
from healthscore.service.ingest.decode import Decoded, Decoder
from healthscore.service.ops.drift import UsageDrift
from healthscore.service.ops.metrics import Metrics
from healthscore.service.outcomes import OutcomeLabeller
from healthscore.service.projector import Projector
from healthscore.service.promotion import Promotion
from healthscore.service.shadow import ShadowScorer
from healthscore.store.db import create_pool
from healthscore.store.dburl import with_database
from healthscore.store.migrate import apply_migrations
from healthscore.store.records import to_datetime
from healthscore_lab.devservices import resolve_services
from tests.bench.core_cpu import stream
from tests.bench.decode_cpu import SUPPORT, USAGE

TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def states_of(organizations: int) -> dict[str, OrganizationState]:
    records = stream(organizations * 5, organizations, 7)
    decoder = Decoder(USAGE, SUPPORT, 64 * 1024)
    states: dict[str, OrganizationState] = {}
    interactions: dict[str, InteractionRecord] = {}
    model = default_model()
    for start in range(0, len(records), 3000):
        items = [decoder.decode(r) for r in records[start : start + 3000]]
        seen: set[object] = set()
        events = []
        for item in align(items, None).applied:
            if isinstance(item, Decoded) and item.event.event_id not in seen:
                seen.add(item.event.event_id)
                events.append(item.event)
        compute_batch_effects(events, states, interactions, model)
    return states


async def measure(
    results: dict[str, Any],
    name: str,
    pid: int,
    count: int,
    run: Callable[[], Awaitable[Any]],
) -> Any:
    wall, cpu, backend = time.perf_counter(), time.process_time(), backend_cpu(pid)
    value = await run()
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    backend = backend_cpu(pid) - backend
    results[name] = {
        "count": count,
        "wall_s": round(wall, 3),
        "service_cpu_us_each": round(cpu / count * 1e6, 1),
        "postgres_cpu_us_each": round(backend / count * 1e6, 1),
    }
    print(name, json.dumps(results[name]), flush=True)
    return value


async def main(organizations: int) -> dict[str, Any]:
    services = resolve_services(
        database_url=os.environ.get("DATABASE_URL"), prefer_containers=False
    )
    name = f"quality_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(services.database_url)
    await admin.execute(f"CREATE DATABASE {name}")
    url = with_database(services.database_url, name)
    try:
        await apply_migrations(url)
        states = states_of(organizations)
        conn = await asyncpg.connect(url)
        ids = [uuid.UUID(org) for org in states]
        await conn.execute("INSERT INTO organizations (id) SELECT unnest($1::uuid[])", ids)
        await conn.execute(
            "INSERT INTO organization_state"
            " (organization_id, state_msgpack, last_event_at, health_version) SELECT * FROM"
            " unnest($1::uuid[], $2::bytea[], $3::timestamptz[], $4::bigint[])",
            ids,
            [pack_state(s) for s in states.values()],
            [to_datetime(s.last_event_at) for s in states.values()],
            [1] * len(ids),
        )
        # queued for the projector, as the batches that wrote them would have
        await conn.execute(
            "INSERT INTO read_model_pending (organization_id, version)"
            " SELECT unnest($1::uuid[]), 1",
            ids,
        )
        await conn.execute("ANALYZE")
        pool = await create_pool(url, "healthscore_writer", min_size=1, max_size=1)
        pid = await pool.fetchval("SELECT pg_backend_pid()")
        results: dict[str, Any] = {"organizations": organizations}
        v1, live = v1_model(), default_model()
        candidate = msgspec.structs.replace(v1, version="v1-shadow")

        scorer = ShadowScorer(pool, candidate, page_size=500)
        await measure(results, "shadow_walk_all_changed", pid, organizations, scorer.catch_up)
        # what autovacuum does once a table has grown: the planner then looks the
        # candidate's rows up by key (analyzed while empty, it would scan them per row)
        analyze = await asyncpg.connect(url)
        await analyze.execute("ANALYZE shadow_health")
        await analyze.close()
        await measure(results, "shadow_walk_none_changed", pid, organizations, scorer.catch_up)

        sample = min(2000, organizations)
        drift = UsageDrift.for_model(pool, Metrics(), live, sample)
        assert drift is not None
        for round_ in (1, 2, 3):
            await measure(results, f"usage_drift_sample_{round_}", pid, sample, drift.step)

        await Projector(pool, v1, None, None, page_size=500).drain(timeout=3600)
        promoting = Promotion(pool, live.version, page_size=500, count_interval=0.0)
        projector = Projector(pool, live, None, None, page_size=500)

        async def promote() -> None:
            while True:
                await promoting.step()
                await projector.drain(timeout=3600)
                if promoting.remaining == 0:
                    return

        # the key's name predates v3 and v4; the target is the live model
        await measure(results, "promotion_v1_to_v2", pid, organizations, promote)
        results["promotion_pages"] = promoting.queued // 500
        left = await pool.fetchval(
            "SELECT count(*) FROM customer_health WHERE score_model_version <> $1", live.version
        )
        assert left == 0 and promoting.queued == organizations, (left, promoting.queued)

        rng = random.Random(3)
        now = datetime.now(UTC)
        raised = [now - timedelta(days=rng.uniform(0, 120)) for _ in ids]
        await conn.execute(
            "INSERT INTO alert_outbox (alert_id, organization_id, kind, episode, payload)"
            " SELECT gen_random_uuid(), o, 'risk_raised', 1,"
            " jsonb_build_object('scored_at', t)"
            " FROM unnest($1::uuid[], $2::timestamptz[]) AS x(o, t)",
            ids,
            raised,
        )
        churned = [
            (o, t + timedelta(days=rng.uniform(1, 90)))
            for o, t in zip(ids, raised, strict=True)
            if rng.random() < 0.1
        ]
        await conn.execute(
            "INSERT INTO churn_labels (organization_id, churned_at, known_until)"
            " SELECT o, t, now() FROM unnest($1::uuid[], $2::timestamptz[]) AS x(o, t)",
            [o for o, _ in churned],
            [t for _, t in churned],
        )
        await conn.close()
        labeller = OutcomeLabeller(
            pool, Metrics(), "healthscore", [USAGE, SUPPORT], default_model()
        )
        await measure(results, "label_outcomes_first", pid, organizations, labeller.step)
        await measure(results, "label_outcomes_again", pid, organizations, labeller.step)
        assert labeller.latest is not None
        results["figures"] = {
            "churned": labeller.latest.churned,
            "retained": labeller.latest.retained,
            "pending": labeller.latest.pending,
        }
        await pool.close()
        return results
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
        services.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--organizations", type=int, default=20_000)
    parser.add_argument("--json-out")
    args = parser.parse_args()
    figures = asyncio.run(main(args.organizations))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n")
