"""PostgreSQL backend CPU per history row written by the day's upsert, three table
shapes, alternated: python docs/bench/history-key-2026-12-05/histbench.py
(with PYTHONPATH=services:services/lab). Variant names in argv[1], comma-separated."""

import asyncio, random, uuid, datetime as dt, sys, json
from pathlib import Path
import asyncpg
from healthscore_lab.devservices import start_embedded_postgres

def cpu(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / 100

COMMON = """
CREATE TABLE organizations (id uuid PRIMARY KEY);
"""
VARIANTS = {
 "A_now": """
CREATE TABLE h (
 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
 organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
 scored_at timestamptz NOT NULL, health_score numeric(5,2) NOT NULL,
 churn_probability numeric(5,4) NOT NULL, risk_level text NOT NULL, components jsonb NOT NULL,
 score_model_version text NOT NULL, cause text NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(),
 day date GENERATED ALWAYS AS ((scored_at AT TIME ZONE 'UTC')::date) STORED,
 CONSTRAINT k UNIQUE (organization_id, day));
CREATE INDEX h_os ON h (organization_id, scored_at DESC);
""",
 "B_pk_day": """
CREATE TABLE h (
 organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
 scored_at timestamptz NOT NULL, health_score numeric(5,2) NOT NULL,
 churn_probability numeric(5,4) NOT NULL, risk_level text NOT NULL, components jsonb NOT NULL,
 score_model_version text NOT NULL, cause text NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(),
 day date GENERATED ALWAYS AS ((scored_at AT TIME ZONE 'UTC')::date) STORED,
 CONSTRAINT k PRIMARY KEY (organization_id, day));
""",
 "C_pk_day_nofk": """
CREATE TABLE h (
 organization_id uuid NOT NULL,
 scored_at timestamptz NOT NULL, health_score numeric(5,2) NOT NULL,
 churn_probability numeric(5,4) NOT NULL, risk_level text NOT NULL, components jsonb NOT NULL,
 score_model_version text NOT NULL, cause text NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(),
 day date GENERATED ALWAYS AS ((scored_at AT TIME ZONE 'UTC')::date) STORED,
 CONSTRAINT k PRIMARY KEY (organization_id, day));
""",
}
UPSERT = """
INSERT INTO h AS h (organization_id, scored_at, health_score, churn_probability, risk_level, components, score_model_version, cause)
SELECT organization_id, scored_at, health_score, churn_probability, risk_level, components::jsonb, $7, cause
FROM unnest($1::uuid[], $2::timestamptz[], $3::float8[], $4::float8[], $5::text[], $6::text[], $8::text[])
 AS x(organization_id, scored_at, health_score, churn_probability, risk_level, components, cause)
ON CONFLICT (organization_id, day) DO UPDATE SET scored_at = EXCLUDED.scored_at, health_score = EXCLUDED.health_score,
 churn_probability = EXCLUDED.churn_probability, risk_level = EXCLUDED.risk_level, components = EXCLUDED.components,
 score_model_version = EXCLUDED.score_model_version, cause = EXCLUDED.cause, recorded_at = now()
WHERE EXCLUDED.scored_at >= h.scored_at
"""
COMP = json.dumps({"engagement": 71.2, "adoption": 55.0, "milestone": 80.0, "support": 92.5, "growth": 60.1})

async def main():
    url, server, root = start_embedded_postgres(None)
    try:
        results = {}
        orgs = [uuid.uuid4() for _ in range(100_000)]
        order = sys.argv[1].split(",") if len(sys.argv) > 1 else ["A_now", "B_pk_day", "C_pk_day_nofk"] * 2
        for rnd, name in enumerate(order):
            c = await asyncpg.connect(url)
            await c.execute("DROP TABLE IF EXISTS h; DROP TABLE IF EXISTS organizations;")
            await c.execute(COMMON + VARIANTS[name])
            await c.copy_records_to_table("organizations", records=[(o,) for o in orgs])
            await c.execute("VACUUM ANALYZE organizations")
            pid = await c.fetchval("SELECT pg_backend_pid()")
            rng = random.Random(7)
            base = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
            batches = []
            for b in range(200):
                sample = rng.sample(orgs, 3000)
                ts = [base + dt.timedelta(hours=rng.uniform(0, 24 * 90)) for _ in sample]
                batches.append((sample, ts))
            # warm with 20 batches not measured
            async def run(bs):
                for sample, ts in bs:
                    n = len(sample)
                    async with c.transaction():
                        await c.execute(UPSERT, sample, ts, [70.5] * n, [0.12] * n, ["low"] * n, [COMP] * n, "v4", ["events"] * n)
            await run(batches[:20])
            t0 = cpu(pid)
            await run(batches[20:])
            t1 = cpu(pid)
            rows = 180 * 3000
            results.setdefault(name, []).append(round((t1 - t0) / rows * 1e6, 2))
            print(name, results[name][-1], "us/row", flush=True)
            await c.close()
        print(results)
    finally:
        server.cleanup()

asyncio.run(main())
