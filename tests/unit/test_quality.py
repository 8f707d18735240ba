"""Score quality in the pure core: episode matching, shadow scoring, import parsing."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from healthscore.contracts.enums import AlertKind, UsageType
from healthscore.core.effects import compute_batch_effects
from healthscore.core.events import UsageEvent
from healthscore.core.quality import (
    ShadowState,
    aggregates_differ,
    compare_raises,
    decode_shadow,
    encode_shadow,
    shadow_alert_id,
    shadow_score,
)
from healthscore.core.scoring.alerts import alert_id_for
from healthscore.core.scoring.model import DAY, ScoreModel, default_model, v1_model
from healthscore.core.scoring.state import OrganizationState
from healthscore.service.imports import (
    SHOWN_ERRORS,
    ImportRefused,
    RowError,
    parse_labels,
    parse_profiles,
    read_csv_text,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
ORG = uuid.UUID("8a7b6c5d-4e3f-4a1b-9c8d-7e6f5a4b3c2d")


def test_raises_match_nearest_first_within_the_window() -> None:
    day = DAY
    live = [10 * day, 40 * day, 100 * day]
    candidate = [8 * day, 12 * day, 41.5 * day, 200 * day]
    changes = compare_raises(live, candidate)
    # 10 -> 12 and 8 are both 2 days away: the first pair in (gap, live, candidate)
    # order wins (8: -2 days); 12 is then unmatched
    assert changes.moved_days == [1.5, -2.0]
    assert changes.added == [12 * day, 200 * day]
    assert changes.dropped == [100 * day]
    assert changes.changed


def test_identical_raises_are_no_change() -> None:
    changes = compare_raises([1.0 * DAY, 30 * DAY], [30 * DAY, 1.0 * DAY])
    assert not changes.changed
    assert compare_raises([0.0], [15 * DAY]).added == [15 * DAY]  # beyond 14 days
    assert compare_raises([0.0], [14 * DAY]).moved_days == [14.0]


def _events(seed: int, count: int) -> list[UsageEvent]:
    """One organization: busy weeks and silences of days, so that the probability of
    churn swings up and down."""
    rng = random.Random(seed)
    users = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(3)]
    at = T0
    events = []
    for _ in range(count):
        at += timedelta(hours=rng.choice([1, 3, 9, 30, 24 * 5, 24 * 12]))
        events.append(
            UsageEvent(
                event_id=uuid.UUID(int=rng.getrandbits(128)),
                organization_id=ORG,
                user_id=rng.choice(users),
                type=rng.choice(
                    [
                        UsageType.LOGIN,
                        UsageType.FEATURE_USED,
                        UsageType.CLIENT_ADDED,
                        UsageType.SEAT_REMOVED,
                    ]
                ),
                feature="calendar",
                occurred_at=at,
            )
        )
    return events


def _live_path(
    events: list[UsageEvent], model: ScoreModel
) -> list[tuple[OrganizationState, AlertKind | None]]:
    """The live state after each event (a copy), with the alert decided on it."""
    states: dict[str, OrganizationState] = {}
    path = []
    for event in events:
        effects = compute_batch_effects([event], states, {}, model)
        kinds = [alert.decision.kind for alert in effects.alerts]
        state = msgspec.json.decode(msgspec.json.encode(states[str(ORG)]), type=OrganizationState)
        path.append((state, kinds[0] if kinds else None))
    return path


def _eager(model: ScoreModel, path_probabilities: list[float], version: str) -> ScoreModel:
    """`model` with alert thresholds inside the range the path's probabilities span."""
    ordered = sorted(path_probabilities)
    enter = ordered[len(ordered) * 7 // 10]
    exit_ = ordered[len(ordered) * 4 // 10]
    alerts = msgspec.structs.replace(
        model.alerts, enter_probability=enter, exit_probability=exit_, persist_hours=0.0
    )
    return msgspec.structs.replace(model, alerts=alerts, version=version)


def _first_look_probabilities(
    path: list[tuple[OrganizationState, AlertKind | None]], model: ScoreModel
) -> list[float]:
    """The churn probability `model` gives each state of `path` at its first look."""
    probabilities = []
    for state, _ in path:
        result = shadow_score(state, None, model)
        assert result is not None  # a first look always scores
        probabilities.append(result.health.churn_probability)
    return probabilities


def test_a_candidate_equal_to_the_live_model_scores_and_alerts_as_it_does() -> None:
    base = v1_model()
    probe = _live_path(_events(7, 120), base)
    probabilities = _first_look_probabilities(probe, base)
    live_model = _eager(base, probabilities, "v1-eager")
    candidate = msgspec.structs.replace(live_model, version="v1-eager-candidate")
    path = _live_path(_events(7, 120), live_model)
    assert sum(1 for _, kind in path if kind is AlertKind.RISK_RAISED) >= 2
    shadow: ShadowState | None = None
    for index, (state, live_kind) in enumerate(path):
        result = shadow_score(state, shadow, candidate)
        assert result is not None
        # stored and read back, as the shadow scorer does between pages
        shadow = decode_shadow(encode_shadow(result.state))
        if index == 0:
            continue  # the candidate's first look: no scores of its own yet
        assert result.health.score == state.last_score
        assert (result.decision.kind if result.decision else None) is live_kind
        if result.decision is not None:
            live_id = alert_id_for(
                str(ORG),
                result.decision.episode,
                result.decision.kind,
                raised_day=int((state.alert.raised_at or 0.0) // 86400),
            )
            if result.decision.kind is not AlertKind.RISK_ESCALATED:
                assert result.decision.alert_id == live_id
            assert shadow_alert_id(result.decision, candidate.version) != live_id
        # nothing new: nothing scored
        assert shadow_score(state, shadow, candidate) is None


def test_a_stricter_candidate_raises_fewer_episodes_on_the_same_states() -> None:
    base = v1_model()
    probe = _live_path(_events(11, 150), base)
    probabilities = _first_look_probabilities(probe, base)
    live_model = _eager(base, probabilities, "live")
    strict = msgspec.structs.replace(
        live_model,
        version="strict",
        alerts=msgspec.structs.replace(
            live_model.alerts, enter_probability=0.999, immediate_probability=None
        ),
    )
    path = _live_path(_events(11, 150), live_model)
    shadow: ShadowState | None = None
    candidate_raises = 0
    for state, _ in path:
        result = shadow_score(state, shadow, strict)
        assert result is not None
        shadow = result.state
        candidate_raises += result.decision is not None and (
            result.decision.kind is AlertKind.RISK_RAISED
        )
    assert sum(1 for _, kind in path if kind is AlertKind.RISK_RAISED) >= 2
    assert candidate_raises == 0


def test_a_state_never_scored_is_not_shadow_scored() -> None:
    assert shadow_score(OrganizationState(organization_id=str(ORG)), None, default_model()) is None


def test_aggregates_differ_names_what_the_state_accumulates_differently() -> None:
    v2 = default_model()
    assert aggregates_differ(v1_model(), v2) == []
    slower = msgspec.structs.replace(
        v2, half_life_days=msgspec.structs.replace(v2.half_life_days, activity=14.0)
    )
    assert aggregates_differ(v2, slower) == ["half_life_days"]


def test_profiles_parse_and_merge_rows_of_one_organization() -> None:
    other = uuid.uuid4()
    text = (
        "organization_id,created_at,milestones\n"
        f"{ORG},2024-05-01T00:00:00Z,onboarding_completed=2024-05-20T10:00:00+02:00\n"
        f"{other},,\n"
        "\n"
        f"{ORG},2024-04-01T00:00:00Z,first_client_added=2024-06-01T00:00:00Z;"
        "onboarding_completed=2024-05-21T00:00:00Z\n"
    )
    profiles = {p.organization_id: p for p in parse_profiles(text)}
    assert set(profiles) == {ORG, other}
    mine = profiles[ORG]
    assert mine.created_at == datetime(2024, 4, 1, tzinfo=UTC).timestamp()  # the earliest
    assert mine.milestones == {
        "onboarding_completed": datetime(2024, 5, 20, 8, tzinfo=UTC).timestamp(),
        "first_client_added": datetime(2024, 6, 1, tzinfo=UTC).timestamp(),
    }
    assert profiles[other].created_at is None and profiles[other].milestones == {}


def test_a_milestone_named_twice_in_one_row_keeps_the_earliest_time() -> None:
    """Across rows the earliest time wins; within a row the later pair overwrote the
    earlier one."""
    text = (
        "organization_id,created_at,milestones\n"
        f"{ORG},,onboarding_completed=2024-05-01T00:00:00Z;"
        "onboarding_completed=2024-09-01T00:00:00Z\n"
    )
    (profile,) = parse_profiles(text)
    assert profile.milestones == {
        "onboarding_completed": datetime(2024, 5, 1, tzinfo=UTC).timestamp()
    }


@pytest.mark.parametrize(
    "written",
    ["2024-W18-3T00:00:00Z", "20240501T000000Z", "2024-122T00:00:00Z", "2024-05-01T00Z"],
    ids=["iso_week", "basic", "ordinal_day", "hour_only"],
)
def test_profile_times_are_read_as_the_contract_reads_them(written: str) -> None:
    # Python's fromisoformat takes these ISO 8601 forms; the contract (RFC 3339) does
    # not, so a profile published from such a row would be a dead letter
    text = f"organization_id,created_at,milestones\n{ORG},{written},\n"
    with pytest.raises(ImportRefused) as refused:
        parse_profiles(text, "p.csv")
    [error] = refused.value.errors
    assert (error.row, error.column) == (2, "created_at")
    assert "not an RFC 3339 time with an offset" in error.reason
    assert "2026-03-01T00:00:00Z" in error.reason
    accepted = parse_profiles(
        f"organization_id,created_at,milestones\n{ORG},2024-05-01 00:00:00+02:00,\n", "p.csv"
    )
    assert len(accepted) == 1


def test_bad_profile_rows_are_all_reported_with_row_and_column() -> None:
    text = (
        "organization_id,created_at,milestones\n"
        f"{ORG},2024-05-01T00:00:00Z,\n"
        "not-a-uuid,2024-05-01T00:00:00Z,\n"
        f"{ORG},2024-05-01 00:00,\n"
        f"{ORG},,clients_1000=2024-05-01T00:00:00Z\n"
        f"{ORG},,onboarding_completed\n"
        f"{ORG},,onboarding_completed=yesterday\n"
        f"{ORG},,,extra\n"
    )
    with pytest.raises(ImportRefused) as refused:
        parse_profiles(text, "p.csv")
    assert [(e.row, e.column) for e in refused.value.errors] == [
        (3, "organization_id"),
        (4, "created_at"),
        (5, "milestones"),
        (6, "milestones"),
        (7, "milestones"),
        (8, "-"),
    ]
    assert "unknown milestone 'clients_1000'" in str(refused.value.errors[2])
    assert "without an offset" in refused.value.errors[1].reason
    with pytest.raises(ImportRefused) as header:
        parse_profiles("org,created,milestones\n", "p.csv")
    assert header.value.errors == [
        RowError(
            1,
            "-",
            "expected the header organization_id,created_at,milestones, "
            "got ['org', 'created', 'milestones']",
        )
    ]


def test_files_from_spreadsheets_read_or_are_refused_by_line(tmp_path: Path) -> None:
    """A byte-order mark (Excel's "CSV UTF-8") made the header a mismatch; a file in
    another encoding, or a field past the csv module's limit, ended in a traceback."""
    header = "organization_id,created_at,milestones\n"
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + f"{header}{ORG},2024-05-01T00:00:00Z,\n".encode())
    (profile,) = parse_profiles(read_csv_text(bom), str(bom))
    assert profile.organization_id == ORG
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(f"{header}{ORG},,\n{ORG},,caf".encode() + b"\xe9\n")
    with pytest.raises(ImportRefused) as refused:
        read_csv_text(latin1)
    assert [(e.row, e.column) for e in refused.value.errors] == [(3, "-")]
    assert "byte 0xe9 is not UTF-8" in refused.value.errors[0].reason
    huge = f'{header}{ORG},,\nnot-a-uuid,,\n{ORG},"{"x" * 200_000}",\n'
    with pytest.raises(ImportRefused) as refused:
        parse_profiles(huge, "huge.csv")
    assert [(e.row, e.column) for e in refused.value.errors] == [(4, "-")]
    assert "field larger than field limit" in refused.value.errors[0].reason


def test_files_whose_lines_end_in_a_carriage_return_alone_read_as_any(tmp_path: Path) -> None:
    """Excel's "CSV (Macintosh)" ends each line with CR alone: the reader took a file
    for one line and refused it, "row 1: not CSV: new-line character seen in unquoted
    field - do you need to open the file in universal-newline mode?", a question to a
    Python programmer. Such a file reads as with LF or CRLF, a quoted line break kept
    inside its cell."""
    other = uuid.uuid4()
    rows = [
        "organization_id,created_at,milestones",
        f"{ORG},2024-05-01T00:00:00Z,onboarding_completed=2024-05-20T00:00:00Z",
        f'{other},,"first_client_added=2024-06-01T00:00:00Z;\rprofile_completed=2024-06-02T00:00:00Z"',
    ]
    for ending in ("\r", "\n", "\r\n"):
        mac = tmp_path / "mac.csv"
        mac.write_bytes(ending.join(rows).encode() + ending.encode())
        profiles = {p.organization_id: p for p in parse_profiles(read_csv_text(mac), str(mac))}
        assert profiles[ORG].created_at == datetime(2024, 5, 1, tzinfo=UTC).timestamp()
        assert sorted(profiles[other].milestones) == ["first_client_added", "profile_completed"]
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(f"{rows[0]}\r{ORG},,\r{ORG},,caf".encode() + b"\xe9\r")
    with pytest.raises(ImportRefused) as refused:
        read_csv_text(latin1)
    assert [(e.row, e.column) for e in refused.value.errors] == [(3, "-")]
    labels = parse_labels(f"organization_id,churned_at\r{ORG},2026-04-01T00:00:00Z\r{other},\r")
    assert {label.organization_id for label in labels} == {ORG, other}
    with pytest.raises(ImportRefused) as refused:
        parse_labels(f"organization_id,churned_at\r{ORG},\rx,\r")
    assert [(e.row, e.column) for e in refused.value.errors] == [(3, "organization_id")]


def test_labels_parse_and_refuse_bad_rows() -> None:
    other = uuid.uuid4()
    labels = parse_labels(f"organization_id,churned_at\n{ORG},2026-04-01T00:00:00Z\n{other},\n")
    by_org = {label.organization_id: label.churned_at for label in labels}
    assert by_org == {ORG: datetime(2026, 4, 1, tzinfo=UTC), other: None}
    with pytest.raises(ImportRefused) as refused:
        parse_labels(
            f"organization_id,churned_at\n{ORG},\n{ORG},2026-04-01T00:00:00Z\nx,\n{other},April\n"
        )
    assert [(e.row, e.column) for e in refused.value.errors] == [
        (3, "organization_id"),
        (4, "organization_id"),
        (5, "churned_at"),
    ]
    # with the time the labels are known until: a churn after it is refused (a label
    # records a churn that happened), one at it is taken
    until = datetime(2026, 4, 1, tzinfo=UTC)
    text = f"organization_id,churned_at\n{ORG},2026-04-01T00:00:00Z\n{other},2026-04-01T00:00:01Z\n"
    with pytest.raises(ImportRefused) as refused:
        parse_labels(text, "labels.csv", until)
    assert [(e.row, e.column) for e in refused.value.errors] == [(3, "churned_at")]
    assert "after the time the labels are known until" in refused.value.errors[0].reason
    assert len(parse_labels(text, "labels.csv", datetime(2026, 4, 2, tzinfo=UTC))) == 2


def test_a_file_wrong_throughout_is_refused_with_its_first_rows_and_a_count() -> None:
    """Another export's columns, or one field wrong on every row, make every row bad: the
    command printed each (a million lines for a million rows) and `evaluate` joined them
    into one message. The first SHOWN_ERRORS are listed, then how many more."""
    rows = "".join(f"not-an-id-{n},2020-01-01T00:00:00Z,\n" for n in range(1, 1001))
    with pytest.raises(ImportRefused) as refused:
        parse_profiles("organization_id,created_at,milestones\n" + rows, "crm.csv")
    assert len(refused.value.errors) == 1000  # all of them kept for a program
    lines = refused.value.lines()
    assert len(lines) == SHOWN_ERRORS + 1
    assert lines[0].startswith("crm.csv: row 2, column organization_id:")
    assert lines[-1] == f"... and {1000 - SHOWN_ERRORS} more (the first {SHOWN_ERRORS} shown)"
    assert refused.value.lines(limit=2000)[-1].startswith("crm.csv: row 1001,")


def test_the_nil_uuid_is_no_organization_in_an_import() -> None:
    # as the topics refuse it: a spreadsheet's empty id exported as zeros would make one
    # organization of every row without one
    nil = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(ImportRefused) as refused:
        parse_profiles(f"organization_id,created_at,milestones\n{nil},2024-05-01T00:00:00Z,\n")
    [error] = refused.value.errors
    assert (error.row, error.column, error.reason) == (
        2,
        "organization_id",
        "the nil UUID is not an id",
    )
    with pytest.raises(ImportRefused) as refused:
        parse_labels(f"organization_id,churned_at\n{ORG},\n{nil.replace('-', '')},\n")
    assert [(e.row, e.column) for e in refused.value.errors] == [(3, "organization_id")]


def test_a_warehouse_exports_null_and_hour_offsets_are_refused_with_their_fix() -> None:
    # a psql \copy writes `+00`; a SQL client `NULL`: both refused, saying what to write
    # instead (before: pydantic's "unexpected extra characters", review 37a L1)
    text = (
        "organization_id,churned_at\n"
        f"{ORG},NULL\n"
        f"{uuid.uuid4()},2025-05-02 16:54:04.566575+00\n"
        f"{uuid.uuid4()},\n"
    )
    with pytest.raises(ImportRefused) as refused:
        parse_labels(text, "l.csv")
    reasons = [(e.row, e.reason) for e in refused.value.errors]
    assert reasons == [
        (2, "'NULL': a null written as text: leave the cell empty"),
        (
            3,
            "'2025-05-02 16:54:04.566575+00': an offset without its minutes (as psql "
            "prints a timestamptz): write +00:00, not +00",
        ),
    ]
