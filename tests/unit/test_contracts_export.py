"""The exported JSON Schemas and AsyncAPI document match the code."""

import json

from healthscore.contracts.export import CONTRACT_MODELS, render_all, stale_files


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
