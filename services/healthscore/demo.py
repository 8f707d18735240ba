"""`healthscore demo`: everything at once, on the embedded services.

Starts the service in this process, feeds it a synthetic stream, and prints
the dashboard's view (organizations by band, the riskiest ones with their
top reasons) while churn-risk alerts arrive on the alert topic.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from healthscore.app import Service, ServiceOptions
from healthscore.config import Settings
from healthscore.db import DatabaseTLS, connect, database_tls
from healthscore.kafka_clients import KafkaConnection
from healthscore.migrate import apply_migrations
from healthscore.simulator import SimulationConfig, generate, produce

BANDS_QUERY = """
SELECT health_status, count(*) AS n FROM customer_health GROUP BY 1 ORDER BY 1
"""
RISKIEST_QUERY = """
SELECT organization_id, health_score, health_status, churn_probability, risk_level,
       risk_factors::text AS risk_factors
FROM customer_health ORDER BY health_score ASC LIMIT $1
"""


@dataclass
class DemoOptions:
    organizations: int = 200
    events: int = 20_000
    rate: float = 4000.0
    seed: int = 7
    span_days: int = 30
    settle_seconds: float = 5.0
    top: int = 8
    dashboard: bool = True  # serve the dashboard at the end, until Ctrl-C


async def _watch_alerts(
    settings: Settings, stop: asyncio.Event, seen: list[dict[str, Any]]
) -> None:
    consumer = KafkaConnection.from_settings(settings).consumer(
        settings.alert_topic,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    alert = orjson.loads(record.value)
                    seen.append(alert)
                    reasons = ", ".join(f["factor"] for f in alert["risk_factors"][:3])
                    print(
                        f"  ALERT {alert['kind']:<15} org {alert['organization_id'][:8]} "
                        f"score {alert['health_score']:5.1f} risk {alert['risk_level']:<8} "
                        f"because: {reasons}",
                        flush=True,
                    )
    finally:
        await consumer.stop()


async def _print_dashboard(database_url: str, top: int, tls: DatabaseTLS = None) -> None:
    conn = await connect(database_url, tls)
    try:
        bands = await conn.fetch(BANDS_QUERY)
        riskiest = await conn.fetch(RISKIEST_QUERY, top)
    finally:
        await conn.close()
    print("  organizations by band: " + ", ".join(f"{r['health_status']}={r['n']}" for r in bands))
    for row in riskiest:
        factors = orjson.loads(row["risk_factors"])[:2]
        why = "; ".join(f"{f['factor']} ({f['impact']:+.1f})" for f in factors)
        print(
            f"    {str(row['organization_id'])[:8]}  {float(row['health_score']):5.1f} "
            f"{row['health_status']:<9} p(churn)={float(row['churn_probability']):.2f}  {why}"
        )


async def run_demo(settings: Settings, options: DemoOptions) -> int:
    assert settings.database_url is not None
    admin_url = (settings.migration_database_url or settings.database_url).get_secret_value()
    tls = database_tls(settings)
    applied = await apply_migrations(admin_url, tls=tls)
    print(f"migrations applied: {len(applied)}")
    service = Service(settings, ServiceOptions(run_sweep=True))
    await service.start()
    stop = asyncio.Event()
    alerts: list[dict[str, Any]] = []
    watcher = asyncio.create_task(_watch_alerts(settings, stop, alerts))
    producer = KafkaConnection.from_settings(settings).producer(
        acks="all", enable_idempotence=False
    )
    await producer.start()
    try:
        start = datetime.now(UTC) - timedelta(days=options.span_days)
        config = SimulationConfig(
            start=start,
            organizations=options.organizations,
            events=options.events,
            seed=options.seed,
            span=timedelta(days=options.span_days) - timedelta(minutes=1),
        )
        print(
            f"producing {options.events} events for {options.organizations} organizations "
            f"at {options.rate:.0f}/s ..."
        )
        send = asyncio.create_task(
            produce(
                generate(config),
                producer,
                settings.usage_topic,
                settings.support_topic,
                rate=options.rate,
            )
        )
        while not send.done():
            await asyncio.sleep(2.0)
            await _print_dashboard(admin_url, 3, tls)
        stats = await send
        print(
            f"produced {stats.sent} messages ({stats.duplicates} duplicates, "
            f"{stats.malformed} malformed) in {stats.seconds:.1f}s"
        )
        await asyncio.sleep(options.settle_seconds)  # let the last batches and alerts land
        print("final dashboard:")
        await _print_dashboard(admin_url, options.top, tls)
        print(f"alerts received: {len(alerts)}")
        if options.dashboard:
            from healthscore.api.server import run_dashboard

            await run_dashboard(settings)  # the service keeps scoring meanwhile
    finally:
        stop.set()
        await watcher
        await producer.stop()
        await service.stop()
    return 0
