"""The served AsyncAPI page and document: self-contained, broker address hidden by default."""

from __future__ import annotations

import json
import re

import pytest
from faststream.kafka import KafkaBroker

from healthscore.config import Settings
from healthscore.service.broker import build_broker
from healthscore.service.ops.asyncapi import HIDDEN_HOST, asyncapi_html, asyncapi_json
from healthscore.service.ops.asyncapi_page import render_html
from tests.utils.html import Tags, external_references

BOOTSTRAP = "kafka-0.kafka.internal.example:9092,10.20.30.40:9093"


SETTINGS = Settings.model_construct()


@pytest.fixture(scope="module")
def broker() -> KafkaBroker:
    broker = build_broker(SETTINGS, BOOTSTRAP)
    return broker


def test_the_page_loads_nothing_from_elsewhere(broker: KafkaBroker) -> None:
    for show in (False, True):
        page = asyncapi_html(broker, SETTINGS, show)
        assert external_references(page) == []
        tags = {tag for tag, _ in Tags(page).tags}
        assert not tags & {"script", "link", "img", "iframe", "object", "embed", "base"}
        assert "@import" not in page and "url(" not in page
        assert "http://" not in page and "https://" not in page


def test_the_broker_address_is_hidden_by_default(broker: KafkaBroker) -> None:
    page = asyncapi_html(broker, SETTINGS)
    document = json.loads(asyncapi_json(broker, SETTINGS))
    for host in ("kafka.internal", "10.20.30.40", "9092"):
        assert host not in page
        assert host not in json.dumps(document)
    assert {server["host"] for server in document["servers"].values()} == {HIDDEN_HOST}
    assert "ASYNCAPI_SHOW_SERVERS=true" in page


def test_the_broker_address_is_shown_when_configured(broker: KafkaBroker) -> None:
    page = asyncapi_html(broker, SETTINGS, show_servers=True)
    document = json.loads(asyncapi_json(broker, SETTINGS, show_servers=True))
    assert {server["host"] for server in document["servers"].values()} == {BOOTSTRAP}
    assert BOOTSTRAP in page
    assert HIDDEN_HOST not in json.dumps(document)


def test_the_page_shows_every_channel_and_payload(broker: KafkaBroker) -> None:
    page = asyncapi_html(broker, SETTINGS)
    document = json.loads(asyncapi_json(broker, SETTINGS))
    for channel in document["channels"].values():
        assert f"<code>{channel['address']}</code>" in page
    for name in ("UsageEvent", "SupportEvent", "ChurnRiskAlert", "HealthUpdate"):
        assert f'id="schema-{name}"' in page
    # fields with their types and descriptions, and links to the named schemas
    assert "<code>event_id</code></td><td>string (uuid)<br>" in page
    assert re.search(
        r"<code>event_id</code></td><td>[^\n]*pattern <code>[^\n]*</td><td>yes</td>", page
    )
    assert '<a href="#schema-UsageType">UsageType</a>' in page
    # every in-page link has its target
    targets = set(re.findall(r'id="([^"]+)"', page))
    for link in re.findall(r'href="#([^"]+)"', page):
        assert link in targets, link


def test_text_from_the_document_is_escaped() -> None:
    document = {
        "asyncapi": "3.0.0",
        "info": {"title": "<script>alert(1)</script>", "version": "1", "description": "a `<b>`"},
        "servers": {"x": {"host": '"><img src=//evil.example/x>', "protocol": "kafka"}},
        "channels": {},
        "operations": {},
        "components": {
            "schemas": {"S": {"type": "object", "properties": {"<i>": {"type": "string"}}}}
        },
    }
    page = render_html(document)
    assert "<script" not in page and "<img" not in page and "<i>" not in page and "<b>" not in page
    assert "&lt;script&gt;" in page
    assert "<code>&lt;b&gt;</code>" in page
    assert external_references(page) == []
    assert {tag for tag, _ in Tags(page).tags} <= {
        *("html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "nav", "a"),
        *("table", "tr", "th", "td", "code", "span", "br"),
    }


def test_the_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().asyncapi_show_servers is False
    monkeypatch.setenv("ASYNCAPI_SHOW_SERVERS", "true")
    monkeypatch.setenv("READINESS_INTERVAL_SECONDS", "5")
    settings = Settings()
    assert settings.asyncapi_show_servers is True
    assert settings.readiness_interval_seconds == 5.0
