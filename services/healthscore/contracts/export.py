"""Write the contract's JSON Schema files (schema/contracts/*.json)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from healthscore.contracts.alerts import ChurnRiskAlert, HealthUpdate
from healthscore.contracts.profile import OrganizationProfile
from healthscore.contracts.support import SupportEvent
from healthscore.contracts.usage import UsageEvent

# file name -> model; the topic each travels on is in shared/contract.md
CONTRACT_MODELS: dict[str, type[BaseModel]] = {
    "product.usage.v1.json": UsageEvent,
    "support.interactions.v1.json": SupportEvent,
    "organization.profile.v1.json": OrganizationProfile,
    "customer.churn-risk.v1.json": ChurnRiskAlert,
    "customer.health.v1.json": HealthUpdate,
}


JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def default_schema_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "schema" / "contracts"


def render_schemas() -> dict[str, str]:
    """File name -> JSON text, deterministic (sorted keys, trailing newline)."""
    rendered = {}
    for name, model in CONTRACT_MODELS.items():
        schema = model.model_json_schema(mode="validation")
        schema["$id"] = f"healthscore/{name}"
        # the dialect named, as validators that pick one by it (jsonschema's
        # `validator_for`, Go's) otherwise assume theirs
        schema["$schema"] = JSON_SCHEMA_DIALECT
        rendered[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return rendered


ASYNCAPI_FILE = "asyncapi.json"


def render_all() -> dict[str, str]:
    """Every exported document: the JSON Schemas, the AsyncAPI document, the read API's.

    Rendered for the default settings (the contract's topic names), whatever
    the environment says.
    """
    from healthscore.api.contract import render_api_contracts
    from healthscore.config import Settings
    from healthscore.service.ops.asyncapi import render_asyncapi

    documents = render_schemas()
    documents[ASYNCAPI_FILE] = render_asyncapi(Settings.model_construct())
    documents.update(render_api_contracts())  # the read API: OpenAPI and TypeScript
    return documents


def stale_files(directory: Path | None = None) -> list[str]:
    """Names of exported files that are missing or differ from the code."""
    directory = directory or default_schema_dir()
    return [
        name
        for name, text in render_all().items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    ]


def write_all(directory: Path | None = None) -> list[Path]:
    directory = directory or default_schema_dir()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
