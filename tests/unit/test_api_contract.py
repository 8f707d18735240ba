"""The read API's contract files: OpenAPI document and TypeScript types, current and complete."""

import json

from healthscore.api.contract import TYPESCRIPT_FILE, openapi_document, render_api_contracts
from healthscore.contracts.export import default_schema_dir

ENDPOINTS = {
    ("/api/v1/organizations", "get"),
    ("/api/v1/organizations/{organization_id}", "get"),
    ("/api/v1/organizations/{organization_id}/history", "get"),
    ("/api/v1/organizations/{organization_id}/milestones", "get"),
    ("/api/v1/organizations/{organization_id}/milestones/{milestone_type}/acknowledge", "post"),
    ("/api/v1/organizations/{organization_id}/milestones/{milestone_type}/reward", "post"),
    ("/api/v1/interactions", "get"),
    ("/api/v1/me", "get"),
    ("/api/v1/score-quality", "get"),
    ("/api/v1/freshness", "get"),
}


def test_checked_in_openapi_and_typescript_are_current() -> None:
    # test_contracts_export checks every file; this names the API's for a clearer failure
    for name, text in render_api_contracts().items():
        assert (default_schema_dir() / name).read_text() == text, (
            f"{name} is stale: run `healthscore export-contracts` and commit the result"
        )


def test_every_endpoint_is_documented_with_bearer_auth_and_problems() -> None:
    document = openapi_document()
    operations = {(p, m) for p, methods in document["paths"].items() for m in methods}
    assert operations == ENDPOINTS
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, method in ENDPOINTS:
        operation = document["paths"][path][method]
        assert operation["security"] == [{"HTTPBearer": []}], path
        assert "401" in operation["responses"], path
        assert operation["responses"]["200"]["content"]["application/json"]["schema"], path


def test_typescript_declares_every_schema_and_path() -> None:
    document = openapi_document()
    text = render_api_contracts()[TYPESCRIPT_FILE]
    for name in document["components"]["schemas"]:
        assert f"export interface {name} " in text or f"export type {name} = " in text, name
    for path, _ in ENDPOINTS:
        assert json.dumps(path) in text
    assert "health_status: HealthStatus;" in text
    assert "next_cursor: string | null;" in text
