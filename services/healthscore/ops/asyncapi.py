"""The AsyncAPI document, generated from the FastStream broker and the contracts."""

from __future__ import annotations

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from faststream.specification.asyncapi.site import get_asyncapi_html

from healthscore import __version__
from healthscore.config import Settings
from healthscore.contracts import ChurnRiskAlert, HealthUpdate

DESCRIPTION = (
    "Consumes product usage and support-interaction events, keeps per-organization "
    "health scores in PostgreSQL, and publishes churn-risk alerts (with the risk "
    "factors that drove them) and a compacted feed of the latest scores. Invalid "
    "input goes unchanged to `<topic>.dlq` with headers x-error-reason, "
    "x-error-detail, x-source-topic, x-source-partition, x-source-offset."
)


def declare_outputs(broker: KafkaBroker, settings: Settings) -> None:
    """Describe the output topics in the AsyncAPI document.

    The outbox relay and the DLQ send through one aiokafka producer of their
    own (batched acks, raw header bytes); these publisher declarations give
    the document each output's channel and payload schema.
    """
    broker.publisher(
        settings.alert_topic,
        schema=ChurnRiskAlert,
        title=f"{settings.alert_topic}:publish",
        description="One alert per risk episode step; key = organization_id; "
        "alert_id is deterministic, so consumers drop repeats.",
    )
    broker.publisher(
        settings.health_topic,
        schema=HealthUpdate,
        title=f"{settings.health_topic}:publish",
        description="Latest score of each organization; compacted; key = organization_id.",
    )
    for source, dlq in settings.dlq_topics.items():
        broker.publisher(
            dlq,
            schema=bytes,
            title=f"{dlq}:publish",
            description=f"Rejected records of {source}, original bytes unchanged; headers "
            "name the error and the source coordinates.",
        )


def build_spec(broker: KafkaBroker) -> AsyncAPI:
    return AsyncAPI(
        broker,
        title="healthscore",
        version=__version__,
        description=DESCRIPTION,
        schema_version="3.0.0",
    )


def asyncapi_json(broker: KafkaBroker) -> str:
    return build_spec(broker).to_specification().to_json()


def asyncapi_html(broker: KafkaBroker) -> str:
    return get_asyncapi_html(build_spec(broker).to_specification())


def render_asyncapi(settings: Settings) -> str:
    """The document for `settings`, without connecting to anything."""
    import json

    from healthscore.app import build_broker

    broker, _ = build_broker(settings, "localhost:9092", None, None)
    document = json.loads(asyncapi_json(broker))
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
