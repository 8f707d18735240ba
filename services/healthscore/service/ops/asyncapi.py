"""The AsyncAPI document, generated from the FastStream broker and the contracts.

The running service serves it as JSON and as a page rendered here, in Python,
with no script and nothing fetched from elsewhere (`ops.asyncapi_page`). The
broker address is internal: both show a placeholder unless
ASYNCAPI_SHOW_SERVERS=true.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from healthscore import __version__
from healthscore.config import Settings
from healthscore.contracts._common import UUID_LENGTH
from healthscore.service.broker import build_broker, input_payloads
from healthscore.service.ingest.decode import MAX_DETAIL_CHARS, PIPELINE_REASONS, REASONS
from healthscore.service.ingest.dlq import OWN_HEADERS
from healthscore.service.ops.asyncapi_page import render_html
from healthscore.service.outbox import CONTENT_TYPE, CORRELATION_ID_HEADER

DESCRIPTION = (
    "Consumes product usage and support-interaction events and organization profiles "
    "(what a CRM knows from before the stream), keeps per-organization "
    "health scores in PostgreSQL, and publishes churn-risk alerts (with the risk "
    "factors that drove them) and a compacted feed of the latest scores. Invalid "
    "input goes unchanged to `<topic>.dlq` with headers x-error-reason, "
    "x-error-detail, x-source-topic, x-source-partition, x-source-offset, x-rejected-at "
    "(each dead-letter message's headers schema lists them and the reason codes)."
)


def build_spec(broker: KafkaBroker) -> AsyncAPI:
    return AsyncAPI(
        broker,
        title="healthscore",
        version=__version__,
        description=DESCRIPTION,
        schema_version="3.0.0",
    )


HIDDEN_HOST = "<hidden>"
HIDDEN_NOTE = "The broker address is not shown; set ASYNCAPI_SHOW_SERVERS=true to show it."


ORGANIZATION_KEY: dict[str, Any] = {
    "type": "string",
    "format": "uuid",
    "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
    # Python's `$` matches before a final newline: the length refuses it (36c)
    "minLength": UUID_LENGTH,
    "maxLength": UUID_LENGTH,
    "description": (
        "The message key: the organization_id in canonical lowercase text form (36 "
        "characters, UTF-8). Kafka partitions by the key's bytes, so one organization's "
        "messages keep their order on one partition only when every producer spells it "
        "alike; another spelling of the same id (upper case, braces, no hyphens) is "
        "rejected as invalid_key."
    ),
}
"""The Kafka key of every message keyed by organization (the inputs, the alerts, the
feed), as an AsyncAPI Kafka message binding: the JSON Schemas describe values only."""


def _with_keys(document: dict[str, Any]) -> None:
    """Give each message keyed by organization its Kafka key binding (not the dead
    letters: theirs is whatever key the rejected record had)."""
    for name, message in document.get("components", {}).get("messages", {}).items():
        if ".dlq:" not in name:
            message["bindings"] = {"kafka": {"key": ORGANIZATION_KEY, "bindingVersion": "0.5.0"}}


def _dead_letter_headers() -> dict[str, Any]:
    """The headers of a dead letter, as a JSON Schema of string values (Kafka header
    values are bytes; these are UTF-8 text), the reason codes enumerated: what a tool
    reading `<topic>.dlq` may rely on (docs/operations.md, "Dead-letter topics")."""

    def text(description: str, **more: Any) -> dict[str, Any]:
        return {"type": "string", "description": description, **more}

    digits = {"pattern": "^[0-9]+$", "not": {"pattern": "\\n"}}  # `$` and a final newline
    return {
        "type": "object",
        # every dead letter has the relay's own headers, the record's timestamp when
        # the record had one
        "required": sorted(OWN_HEADERS - {"x-source-timestamp-ms"}),
        "properties": {
            "x-error-reason": text(
                "Why the record was rejected (the metric's reason label).",
                enum=sorted({*REASONS, *PIPELINE_REASONS}),
            ),
            "x-error-detail": text(
                "Each field at fault and its rule (up to five; inside properties, where); "
                "control characters escaped.",
                maxLength=MAX_DETAIL_CHARS,
            ),
            "x-source-topic": text("The topic the record was read from."),
            "x-source-partition": text("Its partition.", **digits),
            "x-source-offset": text("Its offset.", **digits),
            "x-rejected-at": text(
                "When the batch rejected it (ISO 8601), the same in every copy.",
                format="date-time",
            ),
            "x-source-timestamp-ms": text("The record's timestamp, if it had one.", **digits),
            "x-value-omitted": text(
                "Only on a dead letter sent without its value (too large with these "
                "headers): the value's size and the producer's headers left out."
            ),
            "x-value-null": text(
                "Only when the source record had neither key nor value: the dead letter's "
                "value is empty instead of null."
            ),
            "x-value-withheld": text(
                "Only on a stand-in (the dead-letter topic refused the dead letter for "
                "its content): the broker's error; the value describes the record, kept "
                "in PostgreSQL (dead_letters_withheld)."
            ),
        },
        "additionalProperties": {
            "type": "string",
            "description": "The producer's own headers, as they came (one named like "
            "these as x-original-<name>).",
        },
    }


def _with_dead_letter_headers(document: dict[str, Any]) -> None:
    headers = _dead_letter_headers()
    for name, message in document.get("components", {}).get("messages", {}).items():
        if ".dlq:" in name:
            message["headers"] = headers


def _alert_headers() -> dict[str, Any]:
    """The headers the outbox relay puts on every alert (`service.outbox`)."""
    name, value = CONTENT_TYPE
    return {
        "type": "object",
        "properties": {
            name: {"type": "string", "const": value.decode()},
            CORRELATION_ID_HEADER: {
                "type": "string",
                "format": "uuid",
                "description": "The alert's alert_id, the same on every re-send.",
            },
        },
        "required": [name, CORRELATION_ID_HEADER],
    }


def _as_sent(document: dict[str, Any], inputs: Mapping[str, str], alert_topic: str) -> None:
    """Each input topic's message is one record of its own contract model (not an array
    of any of the three, as the batch subscriber's annotation reads), and only the
    alerts say a correlation id: FastStream declares one on every message, and a
    producer reading the document would think the service needs or sends one."""
    components = document.get("components", {})
    messages = components.get("messages", {})
    for channel in document.get("channels", {}).values():
        for reference in channel.get("messages", {}).values():
            message = messages.get(reference.get("$ref", "").rsplit("/", 1)[-1])
            if message is None:
                continue
            model = inputs.get(channel.get("address"))
            if model is not None:
                message["payload"] = {"$ref": f"#/components/schemas/{model}"}
            if channel.get("address") != alert_topic:
                message.pop("correlationId", None)
            else:
                message["headers"] = _alert_headers()
    schemas = components.get("schemas", {})
    referenced = json.dumps(document.get("channels", {})) + json.dumps(messages)
    for name in [n for n in schemas if n.endswith(":Message:Payload")]:
        if f"#/components/schemas/{name}" not in referenced:
            del schemas[name]


def asyncapi_document(
    broker: KafkaBroker,
    show_servers: bool = False,
    inputs: Mapping[str, str] | None = None,
    alert_topic: str | None = None,
) -> dict[str, Any]:
    """The document as data; the broker address replaced unless `show_servers`.
    `inputs`: each input topic's model name (`broker.input_payloads`); `alert_topic`:
    the one topic whose messages carry a correlation id."""
    document: dict[str, Any] = json.loads(build_spec(broker).to_specification().to_json())
    _with_keys(document)
    _with_dead_letter_headers(document)
    _as_sent(document, inputs or {}, alert_topic or "")
    if not show_servers:
        for server in document.get("servers", {}).values():
            server["host"] = HIDDEN_HOST
            server["description"] = HIDDEN_NOTE
    return document


def asyncapi_json(broker: KafkaBroker, settings: Settings, show_servers: bool = False) -> str:
    return json.dumps(_of(broker, settings, show_servers))


def asyncapi_html(broker: KafkaBroker, settings: Settings, show_servers: bool = False) -> str:
    return render_html(_of(broker, settings, show_servers))


def _of(broker: KafkaBroker, settings: Settings, show_servers: bool) -> dict[str, Any]:
    return asyncapi_document(broker, show_servers, input_payloads(settings), settings.alert_topic)


def render_asyncapi(settings: Settings) -> str:
    """The document for `settings`, without connecting to anything."""
    # a stand-in address, never a real one: shown as it is
    broker = build_broker(settings, "localhost:9092")
    document = _of(broker, settings, show_servers=True)
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
