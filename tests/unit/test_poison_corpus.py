"""Every poison case is rejected by the real decoder with exactly its reason."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from healthscore.service.ingest.decode import REASONS, Decoder, RawRecord, Rejection
from healthscore_lab.poison import PoisonCase, poison_corpus, profile_poison_corpus

USAGE = "product.usage.v1"
SUPPORT = "support.interactions.v1"
PROFILE = "organization.profile.v1"
TOPICS = {"usage": USAGE, "support": SUPPORT, "profile": PROFILE}
ORG = "0b7f4a4e-3d0c-4a53-9c6e-2f1d5f0c9a11"
NOW = datetime(2025, 3, 14, 15, 9, 26, 535000, tzinfo=UTC)

REQUIRED_CASES = {
    "truncated_json_object",
    "invalid_utf8",
    "json_array",
    "json_string",
    "json_number",
    "empty_value",
    "missing_key",
    "key_body_mismatch",
    "key_not_uuid",
    "oversized_message",
    "properties_over_16_kib",
    "usage_missing_event_id",
    "usage_event_id_not_uuid",
    "unknown_usage_type",
    "unknown_support_action",
    "quantity_as_string",
    "quantity_fractional",
    "quantity_zero",
    "quantity_two_million",
    "feature_too_long",
    "usage_far_future",
    "naive_timestamp",
    "opened_without_type_and_channel",
    "follow_up_without_follow_up_at",
    "subject_too_long",
    "unknown_sentiment",
    "unknown_channel",
    "unknown_priority",
    "unknown_outcome",
}


def _decode(case: PoisonCase, now: datetime) -> Rejection:
    decoder = Decoder(USAGE, SUPPORT, 64 * 1024, profile_topic=PROFILE)
    record = RawRecord(
        topic=TOPICS[case.kind],
        partition=0,
        offset=0,
        key=case.key,
        value=case.value,
        timestamp_ms=int(now.timestamp() * 1000),
    )
    result = decoder.decode(record)
    assert isinstance(result, Rejection), f"{case.name} was accepted"
    return result


CORPUS = poison_corpus(ORG, NOW) + profile_poison_corpus(ORG, NOW)


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_case_is_rejected_with_its_reason(case: PoisonCase) -> None:
    rejection = _decode(case, NOW)
    assert rejection.reason == case.expected_reason, rejection.detail
    assert case.expected_reason in REASONS


def test_names_are_distinct_and_cover_the_brief() -> None:
    names = [case.name for case in CORPUS]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_CASES


def test_sizes_of_the_size_cases() -> None:
    by_name = {case.name: case for case in CORPUS}
    assert len(by_name["oversized_message"].value) > 64 * 1024
    properties = by_name["properties_over_16_kib"].value
    assert 16 * 1024 < len(properties) < 64 * 1024
    assert by_name["missing_key"].key is None
    assert by_name["invalid_utf8"].value.startswith(b"\xff\xfe")


def test_every_topic_and_reason_family_is_exercised() -> None:
    assert {case.kind for case in CORPUS} == {"usage", "support", "profile"}
    reasons = {case.expected_reason for case in CORPUS}
    assert reasons == set(REASONS)


def test_deterministic_and_judged_against_now() -> None:
    assert poison_corpus(ORG, NOW) + profile_poison_corpus(ORG, NOW) == CORPUS
    # a corpus built for another clock and organization still gets the same reasons there
    later = NOW + timedelta(days=400)
    other = str(uuid.UUID(int=12345, version=4))
    elsewhere = later.astimezone(timezone(timedelta(hours=-5)))
    for case in poison_corpus(other, elsewhere) + profile_poison_corpus(other, elsewhere):
        assert _decode(case, later).reason == case.expected_reason, case.name


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError):
        poison_corpus(ORG, NOW.replace(tzinfo=None))
    with pytest.raises(ValueError):
        profile_poison_corpus(ORG, NOW.replace(tzinfo=None))


def test_an_event_on_the_other_activity_topic_is_told_so() -> None:
    # a support event on the usage topic was told "type: Field required" (review 36b L4)
    key = ORG.encode()
    support = {
        "event_id": str(uuid.uuid4()),
        "organization_id": ORG,
        "interaction_id": str(uuid.uuid4()),
        "action": "opened",
        "interaction_type": "check_in",
        "channel": "email",
        "occurred_at": NOW.isoformat(),
    }
    usage = {
        "event_id": str(uuid.uuid4()),
        "organization_id": ORG,
        "type": "login",
        "occurred_at": NOW.isoformat(),
    }
    for kind, body, hint in (
        ("usage", support, "a support.interactions.v1 event"),
        ("support", usage, "a product.usage.v1 event"),
    ):
        case = PoisonCase("misrouted", kind, key, orjson.dumps(body), "missing_field")  # type: ignore[arg-type]
        rejection = _decode(case, NOW)
        assert rejection.reason == "missing_field"
        assert f"(it looks like {hint}" in rejection.detail, rejection.detail
        assert rejection.detail.endswith("sent to the wrong topic?)")
    # a usage event that only lacks its type is not called misrouted
    alone = {k: v for k, v in usage.items() if k != "type"}
    rejection = _decode(
        PoisonCase("no_type", "usage", key, orjson.dumps(alone), "missing_field"), NOW
    )
    assert "wrong topic" not in rejection.detail
