"""The notification team's reading of `customer.churn-risk.v1`: what a consumer built from
the published contract alone may rely on, checked on the records the broker holds.

Nothing of the service is imported but the paths of its exported contract files: each
record is checked against the JSON Schema (`schema/contracts/customer.churn-risk.v1.json`)
and the AsyncAPI document's message (its Kafka key binding, its correlation id header,
the document's content type), and the stream as a whole against the episode promise,
read in topic order after deduplicating on `alert_id` as the contract says to.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import orjson

CONTRACTS = Path(__file__).resolve().parents[2] / "schema" / "contracts"
ALERT_SCHEMA: dict[str, Any] = orjson.loads(
    (CONTRACTS / "customer.churn-risk.v1.json").read_bytes()
)
ASYNCAPI: dict[str, Any] = orjson.loads((CONTRACTS / "asyncapi.json").read_bytes())
ALERT_MESSAGE: dict[str, Any] = ASYNCAPI["components"]["messages"][
    "customer.churn-risk.v1:publish:Message"
]
VALIDATOR = jsonschema.Draft202012Validator(
    ALERT_SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)
# an identifier a CS manager cannot act on: a UUID in a sentence meant for a person
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class Alert:
    partition: int
    offset: int
    key: bytes | None
    headers: dict[str, bytes]
    body: dict[str, Any]


def read_alerts(records: list[Any]) -> list[Alert]:
    """The records as the consumer sees them, in (partition, offset) order."""
    alerts = [
        Alert(r.partition, r.offset, r.key, dict(r.headers or ()), orjson.loads(r.value))
        for r in records
    ]
    return sorted(alerts, key=lambda a: (a.partition, a.offset))


def _header_name(location: str) -> str:
    prefix = "$message.header#/"
    assert location.startswith(prefix), location
    return location[len(prefix) :]


def record_problems(alert: Alert) -> list[str]:
    """What in one record breaks the JSON Schema or the AsyncAPI message."""
    where = f"p{alert.partition}@{alert.offset}"
    problems = [f"{where}: schema: {e.message}" for e in VALIDATOR.iter_errors(alert.body)]
    key_schema = ALERT_MESSAGE["bindings"]["kafka"]["key"]
    key = alert.key.decode() if alert.key is not None else None
    if key is None or not re.fullmatch(key_schema["pattern"], key):
        problems.append(f"{where}: key {alert.key!r} is not the binding's form")
    elif key != alert.body.get("organization_id"):
        problems.append(
            f"{where}: key {key} is not the organization {alert.body.get('organization_id')}"
        )
    correlation = _header_name(ALERT_MESSAGE["correlationId"]["location"])
    if not alert.headers.get(correlation):
        problems.append(f"{where}: no {correlation} header (the AsyncAPI correlation id)")
    elif alert.headers[correlation].decode() != alert.body.get("alert_id"):
        problems.append(f"{where}: {correlation} is not the alert_id (not stable on a re-send)")
    content_type = ALERT_MESSAGE.get("contentType", ASYNCAPI.get("defaultContentType"))
    if content_type is not None and alert.headers.get("content-type") != content_type.encode():
        problems.append(
            f"{where}: content-type header {alert.headers.get('content-type')!r}, "
            f"the document says {content_type}"
        )
    return problems


def explanation_problems(alert: Alert) -> list[str]:
    """Reasons and actions a CS manager reads: consistent with the score, for a person."""
    body = alert.body
    where = f"p{alert.partition}@{alert.offset} {body.get('kind')}"
    problems: list[str] = []
    factors = body.get("risk_factors", [])
    impacts = [f["impact"] for f in factors]
    if [abs(i) for i in impacts] != sorted((abs(i) for i in impacts), reverse=True):
        problems.append(f"{where}: risk factors not largest impact first: {impacts}")
    for factor in factors:
        if _UUID.search(factor["detail"]):
            problems.append(f"{where}: an internal id in {factor['detail']!r}")
    path = body.get("path_to_healthy", [])
    for action in path:
        # an action about one interaction says which as data; its text may name the
        # same id (consumers built before the field read it there), no other
        named = set(_UUID.findall(action["action"]))
        if named - {action.get("interaction_id")}:
            problems.append(f"{where}: {action!r} names an interaction only in its text")
    if [a["impact"] for a in path] != sorted((a["impact"] for a in path), reverse=True):
        problems.append(f"{where}: path not largest first: {path}")
    if body.get("kind") == "recovered" and path:
        problems.append(f"{where}: a recovery with a path out of risk")
    # an empty path says why, as data; a path with actions needs no reason
    reason = body.get("no_path_reason")
    if not path and reason is None:
        problems.append(f"{where}: no action out of risk, and no no_path_reason")
    if path and reason is not None:
        problems.append(f"{where}: actions out of risk, yet no_path_reason {reason!r}")
    if body.get("kind") == "recovered" and reason not in (None, "out_of_risk"):
        problems.append(f"{where}: a recovery whose path is empty for {reason!r}")
    # an action can add at most what separates the score from 100
    if sum(a["impact"] for a in path) > 100.0 - body["health_score"] + 0.01:
        problems.append(f"{where}: actions worth more than 100 - score: {path}")
    return problems


def episode_problems(alerts: list[Alert]) -> list[str]:
    """The stream, deduplicated on alert_id: per organization, episodes in order, one
    raise first, at most one escalation per level, a recovery last; nothing after it
    but the next episode's raise."""
    seen: set[str] = set()
    by_org: dict[str, list[Alert]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    problems: list[str] = []
    identity: dict[tuple[str, int, str, str | None], str] = {}
    for alert in alerts:
        body = alert.body
        org = body["organization_id"]
        partitions[org].add(alert.partition)
        level = body["risk_level"] if body["kind"] == "risk_escalated" else None
        step = (org, body["episode"], body["kind"], level)
        if identity.setdefault(step, body["alert_id"]) != body["alert_id"]:
            problems.append(f"{org}: {step[1:]} under two alert ids")
        if body["alert_id"] in seen:
            continue
        seen.add(body["alert_id"])
        by_org[org].append(alert)
    for org, parts in partitions.items():
        if len(parts) > 1:
            problems.append(f"{org}: on partitions {sorted(parts)}")
    for org, stream in by_org.items():
        expected_episode, open_episode = 1, False
        levels: set[str] = set()
        for alert in stream:
            kind, episode = alert.body["kind"], alert.body["episode"]
            label = f"{org} {kind} episode {episode}"
            if kind == "risk_raised":
                if open_episode or episode != expected_episode:
                    problems.append(f"{label}: expected a raise of episode {expected_episode}")
                open_episode, levels = True, set()
                expected_episode = episode + 1
            elif not open_episode or episode != expected_episode - 1:
                problems.append(f"{label}: not within the open episode")
            elif kind == "risk_escalated":
                level = alert.body["risk_level"]
                if level in levels:
                    problems.append(f"{label}: escalated to {level} twice")
                levels.add(level)
            else:
                open_episode = False
    return problems


def all_problems(alerts: list[Alert]) -> list[str]:
    problems = episode_problems(alerts)
    for alert in alerts:
        problems += record_problems(alert) + explanation_problems(alert)
    return problems
