"""The example alerts shipped for the notification team's tests
(`schema/contracts/examples/customer.churn-risk.v1.json`): valid against the published
schema as a producer's CI reads it, and what the service itself would send, so they
cannot drift from the wire format (review 34b M6)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from healthscore.contracts.alerts import ChurnRiskAlert
from healthscore.contracts.enums import AlertKind
from healthscore.core.bands import health_band, risk_level_for
from healthscore.core.scoring.alerts import alert_id_for
from tests.unit.test_wire_pins import ALERT_PAYLOAD
from tests.utils.schema_instances import judges

EXAMPLES = Path(__file__).parents[2] / "schema/contracts/examples/customer.churn-risk.v1.json"


def examples() -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = orjson.loads(EXAMPLES.read_bytes())["messages"]
    return messages


def test_every_example_is_valid_as_published_and_as_read() -> None:
    judge = judges("customer.churn-risk.v1")
    for message in examples():
        assert judge.errors(message) == [], message["kind"]
        ChurnRiskAlert.model_validate(message)


def test_the_raise_is_the_services_own_output() -> None:
    raised, _ = examples()
    assert raised == {**orjson.loads(ALERT_PAYLOAD), "emitted_at": raised["emitted_at"]}


def test_the_recovery_closes_the_same_episode_as_the_service_would_say_it() -> None:
    raised, recovered = examples()
    assert recovered.keys() == raised.keys()
    org, day = (
        raised["organization_id"],
        int(datetime.fromisoformat(raised["scored_at"]).timestamp() // 86400),
    )
    assert recovered["alert_id"] == str(alert_id_for(org, 1, AlertKind.RECOVERED, raised_day=day))
    assert recovered["episode_id"] == raised["alert_id"] == raised["episode_id"]
    assert recovered["health_status"] == health_band(recovered["health_score"])
    assert recovered["risk_level"] == risk_level_for(recovered["churn_probability"])
    # the factor impacts sum to score - 100, as every score's do
    impacts = sum(f["impact"] for f in recovered["risk_factors"])
    assert round(impacts, 2) == round(recovered["health_score"] - 100, 2)
