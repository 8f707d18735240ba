"""The read API's contract as files: the OpenAPI document and TypeScript types.

`healthscore export-contracts` writes both to schema/contracts/ beside the
message schemas; a test fails when they differ from the code. The TypeScript is
generated here from the OpenAPI document (as the seed's report shipped
interfaces for its tables), so front ends need no code generator of their own.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

OPENAPI_FILE: Final = "openapi.json"
TYPESCRIPT_FILE: Final = "healthscore-api.d.ts"


def openapi_document() -> dict[str, Any]:
    from healthscore.api.app import create_app
    from healthscore.api.auth import TokenVerifier
    from healthscore.api.state import ApiConfig
    from healthscore.store.identity import SigningKey

    # the document does not depend on configuration; nothing connects
    config = ApiConfig(
        "postgresql://unused", "cs_dashboard", 1, SigningKey(1, bytes(32)), TokenVerifier()
    )
    return create_app(config).openapi()


def render_openapi(document: dict[str, Any] | None = None) -> str:
    return json.dumps(document or openapi_document(), indent=2, sort_keys=True) + "\n"


def _ref(schema: dict[str, Any]) -> str:
    return str(schema["$ref"]).rsplit("/", 1)[-1]


def ts_type(schema: dict[str, Any]) -> str:
    """A TypeScript type for a JSON Schema (the subset pydantic and FastAPI emit)."""
    if "$ref" in schema:
        return _ref(schema)
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            parts = [ts_type(s) for s in schema[combinator]]
            return " | ".join(dict.fromkeys(parts))
    if "allOf" in schema:
        return " & ".join(ts_type(s) for s in schema["allOf"])
    kind = schema.get("type")
    if kind == "array":
        item = ts_type(schema.get("items", {}))
        return f"Array<{item}>"
    if kind == "object":
        if "properties" in schema:
            return _object_literal(schema, "  ")
        extra = schema.get("additionalProperties")
        value = ts_type(extra) if isinstance(extra, dict) else "unknown"
        return f"Record<string, {value}>"
    return {
        "string": "string",
        "integer": "number",
        "number": "number",
        "boolean": "boolean",
        "null": "null",
    }.get(str(kind), "unknown")


def _doc(text: str | None, indent: str) -> list[str]:
    if not text:
        return []
    lines = [line.rstrip() for line in text.strip().splitlines()]
    if len(lines) == 1:
        return [f"{indent}/** {lines[0]} */"]
    return [
        f"{indent}/**",
        *(f"{indent} * {line}" if line else f"{indent} *" for line in lines),
        f"{indent} */",
    ]


def _property_name(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$]*", name) else json.dumps(name)


def _object_literal(schema: dict[str, Any], indent: str) -> str:
    required = set(schema.get("required", []))
    lines = ["{"]
    for name, prop in schema.get("properties", {}).items():
        lines += _doc(prop.get("description"), indent)
        optional = "" if name in required else "?"
        lines.append(f"{indent}{_property_name(name)}{optional}: {ts_type(prop)};")
    lines.append(indent[:-2] + "}")
    return "\n".join(lines)


def _declaration(name: str, schema: dict[str, Any]) -> str:
    doc = _doc(schema.get("description"), "")
    if schema.get("type") == "object" and "properties" in schema:
        return "\n".join([*doc, f"export interface {name} {_object_literal(schema, '  ')}"])
    return "\n".join([*doc, f"export type {name} = {ts_type(schema)};"])


def _operation(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    lines = _doc(operation.get("summary"), "    ")
    lines.append(f"    {method}: {{")
    params: dict[str, list[str]] = {}
    for param in operation.get("parameters", []):
        schema = param.get("schema", {})
        optional = "" if param.get("required") else "?"
        params.setdefault(param["in"], []).append(
            f"{_property_name(param['name'])}{optional}: {ts_type(schema)};"
        )
    for where in ("path", "query"):
        if where in params:
            lines.append(f"      {where}: {{ {' '.join(params[where])} }};")
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body:
        lines.append(f"      body: {ts_type(body['schema'])};")
    responses = operation.get("responses", {})
    ok = responses.get("200", {}).get("content", {}).get("application/json", {})
    lines.append(f"      response: {ts_type(ok.get('schema', {})) if ok else 'void'};")
    errors = sorted(code for code in responses if not code.startswith("2"))
    if errors:
        lines.append(f"      /** application/problem+json on {', '.join(errors)} */")
        lines.append("      problem: Problem;")
    lines.append("    };")
    return lines


def render_typescript(document: dict[str, Any] | None = None) -> str:
    document = document or openapi_document()
    schemas = document.get("components", {}).get("schemas", {})
    out = [
        "// Generated by `healthscore export-contracts` from schema/contracts/openapi.json:",
        "// do not edit. The TypeScript view of the read API for front ends.",
        f"// {document['info']['title']}, version {document['info']['version']}.",
        "",
    ]
    for name in sorted(schemas):
        out += [_declaration(name, schemas[name]), ""]
    out.append("/** Every endpoint: its parameters, body and success response. */")
    out.append("export interface Paths {")
    for path in sorted(document.get("paths", {})):
        out.append(f"  {json.dumps(path)}: {{")
        for method, operation in sorted(document["paths"][path].items()):
            out += _operation(path, method, operation)
        out.append("  };")
    out.append("}")
    return "\n".join(out) + "\n"


def render_api_contracts() -> dict[str, str]:
    document = openapi_document()
    return {OPENAPI_FILE: render_openapi(document), TYPESCRIPT_FILE: render_typescript(document)}
