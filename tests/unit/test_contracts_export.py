"""The exported JSON Schemas and AsyncAPI document match the code."""

import json
import uuid

import jsonschema
import orjson

from healthscore.contracts.export import CONTRACT_MODELS, render_all, stale_files
from healthscore.service.ingest.decode import (
    PIPELINE_REASONS,
    REASONS,
    Decoder,
    RawRecord,
    Rejection,
)
from healthscore.service.ingest.dlq import dlq_headers
from healthscore.service.ops.asyncapi import ORGANIZATION_KEY
from healthscore.service.outbox import CONTENT_TYPE, CORRELATION_ID_HEADER


def test_exported_contract_files_are_current() -> None:
    assert stale_files() == [], "run `healthscore export-contracts` and commit the result"


def test_every_message_has_a_schema_with_field_descriptions() -> None:
    documents = render_all()
    for name, model in CONTRACT_MODELS.items():
        schema = json.loads(documents[name])
        assert set(schema["properties"]) == set(model.model_fields)
        described = [p for p in schema["properties"].values() if "description" in p]
        assert len(described) >= len(schema["properties"]) // 2, name


def test_asyncapi_names_every_topic_and_payload() -> None:
    document = json.loads(render_all()["asyncapi.json"])
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses == {
        "product.usage.v1",
        "support.interactions.v1",
        "organization.profile.v1",
        "product.usage.v1.dlq",
        "support.interactions.v1.dlq",
        "organization.profile.v1.dlq",
        "customer.churn-risk.v1",
        "customer.health.v1",
    }
    schemas = document["components"]["schemas"]
    for model in (
        "UsageEvent",
        "SupportEvent",
        "OrganizationProfile",
        "ChurnRiskAlert",
        "HealthUpdate",
    ):
        assert model in schemas
    assert schemas["UsageEvent"]["properties"]["event_id"]["description"]


def test_each_input_topic_carries_one_record_of_its_own_model() -> None:
    """The one batch subscriber's annotation (a list of any of the three models) made
    the document say every input topic carries an array of any input event; and
    FastStream declared a correlation id header on every message, which only the
    alerts carry."""
    document = json.loads(render_all()["asyncapi.json"])
    messages = document["components"]["messages"]
    payloads = {}
    for channel in document["channels"].values():
        for reference in channel["messages"].values():
            message = messages[reference["$ref"].rsplit("/", 1)[-1]]
            payloads[channel["address"]] = message["payload"]
            correlated = "correlationId" in message
            assert correlated == (channel["address"] == "customer.churn-risk.v1"), channel
    assert payloads["product.usage.v1"] == {"$ref": "#/components/schemas/UsageEvent"}
    assert payloads["support.interactions.v1"] == {"$ref": "#/components/schemas/SupportEvent"}
    assert payloads["organization.profile.v1"] == {
        "$ref": "#/components/schemas/OrganizationProfile"
    }
    assert not [n for n in document["components"]["schemas"] if n.startswith("healthscore:")]


def test_every_keyed_message_says_its_key_as_the_decoder_checks_it() -> None:
    """The JSON Schemas describe values only, and a producer building from them alone
    keyed by an upper-case id (the body accepts any spelling of a UUID) and met
    `invalid_key`: each message keyed by organization carries a Kafka key binding whose
    pattern accepts exactly the keys the decoder accepts."""
    document = json.loads(render_all()["asyncapi.json"])
    messages = document["components"]["messages"]
    keyed = {name for name, m in messages.items() if "bindings" in m}
    assert keyed == {name for name in messages if ".dlq:" not in name}
    assert len(keyed) == 5  # the three inputs, the alerts, the feed
    # as a JSON Schema validator reads it (Python's: `$` matches before a final newline)
    key_schema = jsonschema.Draft202012Validator(ORGANIZATION_KEY)
    assert all(messages[name]["bindings"]["kafka"]["key"] == ORGANIZATION_KEY for name in keyed)
    org = uuid.uuid4()
    decoder = Decoder("usage", "support", 65536)
    for key in (
        str(org),
        str(org).upper(),
        "{" + str(org) + "}",
        org.hex,
        f"urn:uuid:{org}",
        str(org) + " ",
        str(org) + "\n",
        str(org)[:-1] + "G",
    ):
        body = {
            "event_id": str(uuid.uuid4()),
            "organization_id": str(org),
            "event_type": "feature_used",
            "occurred_at": "2026-01-01T00:00:00Z",
            "user_id": str(uuid.uuid4()),
            "feature": "invoices",
        }
        decoded = decoder.decode(RawRecord("usage", 0, 0, key.encode(), orjson.dumps(body)))
        accepted = not (isinstance(decoded, Rejection) and decoded.reason == "invalid_key")
        assert accepted == key_schema.is_valid(key), key
    assert key_schema.is_valid(str(org))


def test_every_dead_letter_message_says_its_headers_and_every_reason() -> None:
    """The dead letters' messages declared a binary payload and nothing else: a tool
    reading `<topic>.dlq` learned its headers and reason codes from the operations guide
    only. Each says them now, the reasons exactly those the service gives."""
    document = json.loads(render_all()["asyncapi.json"])
    messages = document["components"]["messages"]
    dead = {name: m for name, m in messages.items() if ".dlq:" in name}
    assert len(dead) == 3  # one per input topic
    for message in dead.values():
        headers = message["headers"]
        assert set(headers["properties"]["x-error-reason"]["enum"]) == {
            *REASONS,
            *PIPELINE_REASONS,
        }
        assert {"x-error-reason", "x-source-offset", "x-rejected-at"} <= set(headers["required"])
    # and the headers the relay writes are the ones it declares
    record = RawRecord("product.usage.v1", 3, 42, b"k", b"v", 1700000000000)
    written = {
        name for name, _ in dlq_headers(Rejection(record, "invalid_json", "not valid JSON"), True)
    }
    properties = next(iter(dead.values()))["headers"]["properties"]
    assert written <= set(properties), written - set(properties)


def test_the_alert_message_says_its_headers() -> None:
    """The alert message declared a correlation id but not the headers that carry it: a
    notification consumer generated from the document did not know `content-type` or
    `correlation_id` (review 34b L1). They are the relay's own constants."""
    document = json.loads(render_all()["asyncapi.json"])
    messages = document["components"]["messages"]
    (alert,) = [m for name, m in messages.items() if "churn-risk" in name]
    headers = alert["headers"]
    assert set(headers["required"]) == {CONTENT_TYPE[0], CORRELATION_ID_HEADER}
    assert headers["properties"][CONTENT_TYPE[0]]["const"] == CONTENT_TYPE[1].decode()
