"""The labels the alert rules, the dashboard and the runbooks select and group by are
labels a real `serve` exports.

tests/unit/test_deploy.py checks the metric names against the registry; a rule that
filters or groups by a label the service never puts on that metric is still valid
PromQL and simply never matches (`{change="revoked"}` on a metric labelled `kind`
would keep HealthscoreRebalanceStorm silent forever). Here the names and labels come
from /metrics of a running service that consumed, applied and dead-lettered records.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from healthscore.api.metrics import ApiMetrics
from healthscore.service.app import ServiceOptions
from healthscore.service.ops.metrics import Metrics
from tests.unit.test_deploy import alert_rules, dashboard_expressions
from tests.utils.harness import (
    make_producer,
    make_topics,
    ops_get,
    produce_json,
    running_service,
    service_settings,
)
from tests.utils.scenarios import wait_processed

ROOT = Path(__file__).resolve().parents[2]
# labels Prometheus (the scrape target, kube-state-metrics) adds, and a histogram's
TARGET_LABELS = {"job", "instance", "namespace", "pod", "deployment", "le"}
SELECTOR = re.compile(r"\b((?:healthscore_|healthscore:)[a-z0-9_:]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
METRIC = re.compile(r"\b(?:healthscore_|healthscore:)[a-z0-9_:]+")


def runbook_promql() -> list[tuple[str, str]]:
    """Each line of the ```promql blocks of docs/operations.md and the README."""
    found = []
    for path in (ROOT / "docs" / "operations.md", ROOT / "README.md"):
        for block in re.findall(r"```promql\n(.*?)```", path.read_text(), re.S):
            for line in block.splitlines():
                expr = line.split("#", 1)[0].strip()
                if expr:
                    found.append((f"{path.name}: {expr[:60]}", expr))
    return found


def scraped_labels(text: str) -> dict[str, set[str]]:
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def registered_labels() -> dict[str, set[str]]:
    """Label names of metrics that have no series until something happens (a labelled
    counter before its first increment), and the read API's (another process)."""
    labels: dict[str, set[str]] = {}
    for registry in (Metrics().registry, ApiMetrics().registry):
        for family in registry.collect():
            collector = registry._names_to_collectors[family.name]
            names = set(getattr(collector, "_labelnames", ()))
            for suffix in ("", "_total", "_bucket", "_sum", "_count", "_created"):
                labels.setdefault(family.name + suffix, set()).update(names)
    return labels


def recorded_labels() -> dict[str, set[str]]:
    """A recording rule's series carry the labels its outermost aggregation keeps."""
    labels = {}
    for rule in alert_rules():
        if "record" in rule:
            kept = GROUPING.search(rule["expr"])
            assert kept is not None, rule
            labels[rule["record"]] = {n.strip() for n in kept.group(1).split(",") if n.strip()}
    return labels


def unknown_labels(
    expressions: list[tuple[str, str]], known: dict[str, set[str]]
) -> dict[str, set[str]]:
    unknown: dict[str, set[str]] = {}
    for where, expr in expressions:
        expr = expr.replace('\\"', '"')
        missing: set[str] = set()
        for name, matchers in SELECTOR.findall(expr):
            for label in MATCHER.findall(matchers):
                if label not in TARGET_LABELS and label not in known.get(name, set()):
                    missing.add(f"{name}{{{label}}}")
        # a grouping label must be one some metric of the expression carries
        carried = set().union(*(known.get(n, set()) for n in METRIC.findall(expr)))
        for group in GROUPING.findall(expr):
            for label in (n.strip() for n in group.split(",")):
                if label and label not in TARGET_LABELS and label not in carried:
                    missing.add(f"by ({label})")
        if missing:
            unknown[where] = missing
    return unknown


def test_a_wrong_label_is_reported() -> None:
    known = {"healthscore_rebalances_total": {"change"}}
    assert unknown_labels([("x", 'healthscore_rebalances_total{change="revoked"}')], known) == {}
    assert unknown_labels([("x", 'healthscore_rebalances_total{kind="revoked"}')], known) == {
        "x": {"healthscore_rebalances_total{kind}"}
    }
    assert unknown_labels(
        [("x", "sum by (namespace, topic) (rate(healthscore_rebalances_total[5m]))")], known
    ) == {"x": {"by (topic)"}}


async def test_every_label_the_rules_dashboard_and_runbooks_use_is_exported(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    options = ServiceOptions(run_sweep=True, create_topics=False, gauge_interval_seconds=0.5)
    org = str(uuid.uuid4())
    at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    producer = await make_producer(kafka_bootstrap)
    try:
        async with running_service(settings, options) as service:
            port = service.ops_port
            assert port
            valid = {"event_id": str(uuid.uuid4()), "organization_id": org, "type": "login"}
            await produce_json(producer, topics.usage, [{**valid, "occurred_at": at}])
            await producer.send_and_wait(topics.usage, b"{not json", key=org.encode())
            await wait_processed(migrated_database, 1, exactly=True)
            for _ in range(100):
                _, text = await ops_get(port, "/metrics")
                scraped = scraped_labels(text)
                if "healthscore_events_dead_lettered_total" in scraped and "topic" in (
                    scraped.get("healthscore_consumer_lag_records", set())
                ):
                    break
                await asyncio.sleep(0.2)
    finally:
        await producer.stop()

    # what the scrape shows is the truth for the metrics it carries; the registry only
    # stands in for those with no series yet
    known = {**registered_labels(), **scraped, **recorded_labels()}
    assert known["healthscore_events_dead_lettered_total"] == {"topic", "reason"}
    expressions = [
        *((f"alerts.yml {r.get('alert') or r['record']}", r["expr"]) for r in alert_rules()),
        *dashboard_expressions(),
        *runbook_promql(),
    ]
    assert len(expressions) > 40
    assert unknown_labels(expressions, known) == {}


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
