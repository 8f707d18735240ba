"""An AsyncAPI 3.0 document as one self-contained HTML page.

Rendered on the server from the document itself: servers, operations,
channels with their messages, and every payload schema as a table of fields.
No script, no stylesheet or font or icon from anywhere else: the service runs
offline, and the page must not make an operator's browser call out. Every
text from the document is escaped. The only link out of the page is the JSON
document on the same server.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from typing import Any

SCHEMA_PREFIX = "#/components/schemas/"
JSON_PATH = "/docs/asyncapi.json"

STYLE = """
body{font-family:ui-sans-serif,system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;
line-height:1.5;margin:0 auto;max-width:72rem;padding:1rem 2rem;color:#1f2328}
h1{margin-bottom:0}h2{border-bottom:1px solid #d0d7de;padding-bottom:.3rem;margin-top:2rem}
h3{margin-bottom:.3rem}table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}code{background:#f6f8fa;padding:0 .2rem;border-radius:3px}
pre{background:#f6f8fa;padding:.5rem;overflow-x:auto}.muted{color:#57606a}
.tag{display:inline-block;border-radius:3px;padding:0 .4rem;font-size:.85em;color:#fff}
.receive{background:#1a7f37}.send{background:#0969da}nav a{margin-right:1rem}
"""


def render_html(document: dict[str, Any]) -> str:
    info = document.get("info", {})
    title = f"{info.get('title', 'AsyncAPI')} {info.get('version', '')}".strip()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)} · AsyncAPI</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">AsyncAPI {_e(document.get("asyncapi", ""))} · '
        f'<a href="{JSON_PATH}">the document as JSON</a></p>',
        '<nav><a href="#servers">Servers</a><a href="#operations">Operations</a>'
        '<a href="#channels">Channels</a><a href="#schemas">Schemas</a></nav>',
    ]
    if info.get("description"):
        parts.append(f"<p>{_text(info['description'])}</p>")
    parts += _servers(document.get("servers", {}))
    parts += _operations(document)
    parts += _channels(document)
    parts += _schemas(document.get("components", {}).get("schemas", {}))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _servers(servers: dict[str, Any]) -> list[str]:
    out = ['<h2 id="servers">Servers</h2>']
    if not servers:
        return [*out, '<p class="muted">none declared</p>']
    out.append("<table><tr><th>name</th><th>protocol</th><th>host</th><th>notes</th></tr>")
    for name, server in servers.items():
        protocol = server.get("protocol", "")
        if server.get("protocolVersion"):
            protocol += f" {server['protocolVersion']}"
        out.append(
            f"<tr><td>{_e(name)}</td><td>{_e(protocol)}</td>"
            f"<td><code>{_e(server.get('host', ''))}</code></td>"
            f"<td>{_text(server.get('description', ''))}</td></tr>"
        )
    out.append("</table>")
    return out


def _operations(document: dict[str, Any]) -> list[str]:
    out = ['<h2 id="operations">Operations</h2>']
    operations = document.get("operations", {})
    if not operations:
        return [*out, '<p class="muted">none declared</p>']
    channels = document.get("channels", {})
    out.append("<table><tr><th>action</th><th>channel</th><th>operation</th></tr>")
    for name, operation in operations.items():
        action = str(operation.get("action", ""))
        channel_key = _ref_name(operation.get("channel", {}), "#/channels/")
        channel = channels.get(channel_key, {}) if channel_key else {}
        address = channel.get("address", channel_key or "")
        out.append(
            f'<tr><td><span class="tag {_e(action)}">{_e(action)}</span></td>'
            f'<td><a href="#{_anchor("channel", channel_key or "")}">'
            f"<code>{_e(address)}</code></a></td><td>{_e(name)}</td></tr>"
        )
    out.append("</table>")
    return out


def _channels(document: dict[str, Any]) -> list[str]:
    out = ['<h2 id="channels">Channels</h2>']
    messages = document.get("components", {}).get("messages", {})
    for key, channel in document.get("channels", {}).items():
        address = _e(channel.get("address", key))
        out.append(f'<h3 id="{_anchor("channel", key)}"><code>{address}</code></h3>')
        if channel.get("description"):
            out.append(f"<p>{_text(channel['description'])}</p>")
        rows = []
        for message_ref in channel.get("messages", {}).values():
            name = _ref_name(message_ref, "#/components/messages/")
            message = messages.get(name, message_ref) if name else message_ref
            payload = message.get("payload", {})
            key = message.get("bindings", {}).get("kafka", {}).get("key")
            keyed = _text(key["description"]) if key else _e("as the rejected record had it")
            rows.append(
                f"<tr><td>{_e(message.get('title', name or ''))}</td>"
                f"<td>{_type(payload)}</td>"
                f"<td>{keyed}</td>"
                f"<td>{_e(message.get('contentType', document.get('defaultContentType', '')))}"
                "</td></tr>"
            )
        if rows:
            out.append(
                "<table><tr><th>message</th><th>payload</th><th>key</th><th>content type</th></tr>"
            )
            out += rows
            out.append("</table>")
    return out


def _schemas(schemas: dict[str, Any]) -> list[str]:
    out = ['<h2 id="schemas">Schemas</h2>']
    for name, schema in schemas.items():
        out.append(f'<h3 id="{_anchor("schema", name)}">{_e(schema.get("title", name))}</h3>')
        if schema.get("title", name) != name:
            out.append(f'<p class="muted"><code>{_e(name)}</code></p>')
        if schema.get("description"):
            out.append(f"<p>{_text(schema['description'])}</p>")
        properties = schema.get("properties")
        if isinstance(properties, dict) and properties:
            required = set(schema.get("required", []))
            out.append(
                "<table><tr><th>field</th><th>type</th><th>required</th><th>description</th></tr>"
            )
            for field, spec in properties.items():
                out.append(
                    f"<tr><td><code>{_e(field)}</code></td><td>{_type(spec)}"
                    f"{_constraints(spec)}</td><td>{'yes' if field in required else ''}</td>"
                    f"<td>{_text(spec.get('description', ''))}</td></tr>"
                )
            out.append("</table>")
        elif "enum" in schema:
            values = ", ".join(f"<code>{_e(json.dumps(v))}</code>" for v in schema["enum"])
            kind = _type({k: v for k, v in schema.items() if k != "enum"})
            out.append(f"<p>{kind}: {values}</p>")
        else:
            out.append(f"<p>{_type(schema)}{_constraints(schema)}</p>")
    return out


def _type(schema: Any) -> str:
    """A schema's type in a few words, with links to the named schemas it uses."""
    if not isinstance(schema, dict):
        return _e(json.dumps(schema))
    ref = _ref_name(schema, SCHEMA_PREFIX)
    if ref is not None:
        return f'<a href="#{_anchor("schema", ref)}">{_e(ref)}</a>'
    for combinator, joiner in (("anyOf", " | "), ("oneOf", " | "), ("allOf", " &amp; ")):
        if combinator in schema:
            return joiner.join(_type(s) for s in schema[combinator])
    if "const" in schema:
        return f"<code>{_e(json.dumps(schema['const']))}</code>"
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{_e(json.dumps(v))}</code>" for v in schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        text = " | ".join(_e(str(k)) for k in kind)
    elif kind == "array":
        text = f"array of {_type(schema.get('items', {}))}"
    elif kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        text = f"object of {_type(schema['additionalProperties'])}"
    elif kind is not None:
        text = _e(str(kind))
    else:
        text = "any"
    if schema.get("format"):
        text += f" ({_e(schema['format'])})"
    return text


CONSTRAINTS = (
    ("minimum", "≥"),
    ("exclusiveMinimum", ">"),
    ("maximum", "≤"),
    ("exclusiveMaximum", "<"),
    ("minLength", "length ≥"),
    ("maxLength", "length ≤"),
    ("minItems", "items ≥"),
    ("maxItems", "items ≤"),
    ("pattern", "pattern"),
    ("default", "default"),
)


def _constraints(schema: dict[str, Any]) -> str:
    found = list(_constraint_texts(schema))
    for inner in schema.get("anyOf", []):  # e.g. maxLength inside `string | null`
        if isinstance(inner, dict):
            found += [c for c in _constraint_texts(inner) if c not in found]
    if not found:
        return ""
    return '<br><span class="muted">' + "; ".join(found) + "</span>"


def _constraint_texts(schema: dict[str, Any]) -> Iterable[str]:
    for key, label in CONSTRAINTS:
        if key in schema:
            yield f"{_e(label)} <code>{_e(json.dumps(schema[key]))}</code>"


def _ref_name(value: Any, prefix: str) -> str | None:
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith(prefix):
            return ref[len(prefix) :]
    return None


def _anchor(kind: str, name: str) -> str:
    return _e(f"{kind}-{name}".replace(" ", "_"))


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _text(value: object) -> str:
    """Escaped prose, with `code spans` kept as code."""
    pieces = _e(value).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))
