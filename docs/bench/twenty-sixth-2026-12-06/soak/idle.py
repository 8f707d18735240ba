"""`serve` alone, no records after 3,000 at the start, under the soak probe (idle-a, idle-c).

PYTHONPATH=services:services/lab:. python docs/bench/twenty-sixth-2026-12-06/soak/idle.py
MINUTES OUT_DIR (YT=<n>: GC_YOUNG_THRESHOLD). /metrics is scraped every 15 s; the probe
samples every 15 s and runs a full collection 20 s before the end.
"""

import asyncio
import contextlib
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

from tests.utils.harness import make_producer, make_topics
from tests.utils.soak import _children, _http_get, _start, serve_environment

from healthscore.store.migrate import apply_migrations
from healthscore_lab.devservices import free_port, resolve_services
from healthscore_lab.simulator import SimulationConfig, generate
from healthscore_lab.simulator.kafka import produce


async def main(minutes: float, out: Path) -> None:
    s = resolve_services(prefer_containers=False)
    try:
        url, bs = s.database_url, s.kafka_bootstrap_servers
        await apply_migrations(url)
        topics = await make_topics(bs, partitions=8)
        env = serve_environment(url, bs, topics, "idle")
        env.update(
            {
                "SOAK_OUT": str(out),
                "SOAK_SAMPLE_SECONDS": "15",
                "SOAK_MIN_COUNT": "20",
                "SOAK_COLLECT_AT": str(minutes * 60 - 20),
            }
        )
        if os.environ.get("YT"):
            env["GC_YOUNG_THRESHOLD"] = os.environ["YT"]
        ops = free_port()
        env["OPS_PORT"] = str(ops)
        with _children() as children:
            serve = _start(
                ["-m", "tests.utils.soak_probe", "serve", "--no-migrate"],
                env,
                out / "serve.log",
                children,
            )
            producer = await make_producer(bs)
            config = SimulationConfig.ending_now(
                timedelta(days=3), organizations=300, events=3000, seed=3, profile_share=0.2
            )
            await produce(
                list(generate(config)),
                producer,
                topics.usage,
                topics.support,
                rate=1000,
                profile_topic=topics.profile,
            )
            await producer.stop()
            until = time.monotonic() + minutes * 60
            while time.monotonic() < until:
                with contextlib.suppress(OSError):
                    await _http_get(ops, "/metrics")
                await asyncio.sleep(15)
                assert serve.poll() is None
    finally:
        s.close()


Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
asyncio.run(main(float(sys.argv[1]), Path(sys.argv[2])))
