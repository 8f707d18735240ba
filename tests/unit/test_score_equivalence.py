"""Every output of score() pinned bit for bit on a fixed corpus, by digest.

The score runs after every event, so its code is tuned for speed (the decayed
sums read in one pass, no per-factor rows unless explained, one validation for
all the risk factors of a score). The digests below were recorded with the
plain implementation that preceded the tuning (commit 132a28c). They hash every
field of every HealthScore, explain=True and explain=False: floats by their
shortest round-trip repr (exact), the risk factors as their model_dump_json() in
order, detail texts included. Each corpus has two output digests: the score
(every field but the risk factors, of both) and its explanation (the risk
factors), so that a change of how the factors are reported re-records the
explanation alone and shows that no score, component or probability moved. A
refactoring must keep them; a deliberate change of the numbers or texts
re-records them (run this file: it prints them).

Two corpora:

- stream: the simulator's stream, decoded and applied batch by batch with
  compute_batch_effects (so the states carry real score histories for the 7- and
  30-day changes), every organization's state copied after each batch and
  scored at several as_of up to 60 days later (new and established tenures,
  grace periods, silence, decay);
- edge: seeded random states that reach what the stream seldom does (support
  clamped at 0, many open interactions, decay references after as_of, no first
  event), under the shipped model and a variant whose growth clamps at 0, whose
  grace is off and whose new segment ignores support.

Each corpus's inputs have a digest of their own (without the fields that scores
write, floats to 9 digits), so a failure says which changed: the corpus
(simulator, decoding, aggregation) or the scoring.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import orjson
import pytest

from healthscore import contracts
from healthscore.contracts.enums import HealthStatus, MilestoneType, RiskLevel
from healthscore.core.effects import compute_batch_effects
from healthscore.core.events import Event
from healthscore.core.interactions import InteractionRecord
from healthscore.core.scoring.model import (
    COMPONENTS,
    DAY,
    SIGNALS,
    V1_MODEL_PATH,
    ScoreModel,
    parse_model,
    v1_model,
    v2_model,
)
from healthscore.core.scoring.results import HealthScore, RiskFactor
from healthscore.core.scoring.score import score
from healthscore.core.scoring.state import AlertState, OpenInteraction, OrganizationState
from healthscore.service.ingest.decode import Decoded, Decoder, RawRecord
from healthscore_lab.simulator import SimulationConfig, generate

# recorded with the implementation of commit 132a28c, under v1 (issue 13 added fields,
# signals and factors that v1 leaves off: these still hold, so v1 scores as it did);
# the input digests re-recorded when the state gained `open_beyond` (its encoding
# changed, the outputs did not); the output digest split into the score's and the
# explanation's on the code where the whole one still held (explain23); then only the
# explanation digests (of these and of v2's) re-recorded when the reported factors were
# made to sum exactly to score - 100 (the fold always reported, the rounding apportioned)
STREAM_INPUTS = "4cd5ccfe40d30611102cb388d0f5eac663355fe77d12a183bd733d4d7428dba5"
STREAM_SCORES = "2433c12548e391e2a11cd067fbb5918ffce581860f2314bd6cd8f3f3547d821e"
STREAM_EXPLANATIONS = "5143a0b13dd139e3b9340f7fedaabd2867e1fd1cd4ff8049a5e5f600312381b4"
EDGE_INPUTS = "15cc71debf23e98493f5ac8424c57fe4164103cb9c3f3ab81cbc5bc8ddbd8324"
EDGE_SCORES = "25ab4438469f886234cc16038a5eae3c8619ec82a083196f5ec47149f3d4625f"
EDGE_EXPLANATIONS = "b27aeb1e4886a7bcee27a3267a16d53744072f1e394e1124aa1e12817ea3559f"
# the same corpora scored under v2 (recorded when v2 was fitted, issue 13): v2's numbers
# are deliberate (health_model.v2.json's changelog); a refactoring must keep these too
STREAM_V2_INPUTS = "e4f06eab4ce59c79332b6bd91f2d6a264d392b60b99b1fab4871fbfc97bd937b"
STREAM_V2_SCORES = "dada5cd950c2a87a9de921d3144b8d63eb9b83d475df2517ee866fc358b79a33"
STREAM_V2_EXPLANATIONS = "deec98b2e19882cf01b2c121dc9a9bc19f16874cfb9a70bc4a8a3cc6c52cdc58"
EDGE_V2_INPUTS = "1343e94b8a80effa7d7b18b872f76a89a14e09802d055f98948f0ec819d248d3"
EDGE_V2_SCORES = "0efa26a51ea12f9c24cb0236cdb1c0ce7c093a80b717c3f5b439fea2141ebb74"
EDGE_V2_EXPLANATIONS = "db638b48fd44086d32a28451b21eaaa577f85632bc18a9a5eac64e975920e721"

SIMULATION = SimulationConfig(
    start=datetime(2026, 1, 5, tzinfo=UTC),
    organizations=50,
    events=5000,
    seed=3,
    span=timedelta(days=150),
)
BATCHES = 6
LATER_DAYS = (0.0, 0.5, 3.0, 20.0, 60.0)  # as_of = the state's last event + this
EDGE_STATES = 400
EDGE_SEED = 17
NOW = 1_790_000_000.0  # the edge corpus's as_of, about 2026-09-21

Case = tuple[OrganizationState, float, ScoreModel]
Scores = tuple[HealthScore, HealthScore]  # (explain=True, explain=False)
Corpora = dict[str, tuple[list[Case], list[Scores]]]  # by name: the cases and their scores


def stress_model() -> ScoreModel:
    """The v1 model with clamps and corners the shipped numbers never reach."""
    config = orjson.loads(V1_MODEL_PATH.read_bytes())
    config["segments"]["grace_days"] = 0  # keep = 1 from day one
    config["weights"]["new"]["support"] = 0.0  # support factors carry no impact
    config["growth"].update(baseline=50, negative_penalty=40, negative_cap=100)  # growth < 0
    config["ceilings"].update(open_cancellation_request=90, open_escalation=80)
    return parse_model(orjson.dumps(config))


def stream_states(config: SimulationConfig, batches: int) -> list[OrganizationState]:
    """Every organization's state after each batch of the decoded stream (copies)."""
    decoder = Decoder("usage", "support", 64 * 1024)
    events: list[Event] = []
    for offset, message in enumerate(generate(config)):
        if not message.valid or message.is_duplicate or message.occurred_at is None:
            continue
        record = RawRecord(
            topic=message.topic_kind,
            partition=0,
            offset=offset,
            key=message.key,
            value=message.value,
            timestamp_ms=int(message.occurred_at.timestamp() * 1000) + 1000,
        )
        decoded = decoder.decode(record)
        assert isinstance(decoded, Decoded)
        events.append(decoded.event)
    model = v1_model()
    states: dict[str, OrganizationState] = {}
    interactions: dict[str, InteractionRecord] = {}
    snapshots: list[OrganizationState] = []
    for batch in range(batches):
        part = events[batch * len(events) // batches : (batch + 1) * len(events) // batches]
        # every event a decision point: the score histories the corpus was recorded with
        compute_batch_effects(part, states, interactions, model, decision_bucket=None)
        snapshots.extend(copy(state) for state in states.values())
    return snapshots


def copy(state: OrganizationState) -> OrganizationState:
    return msgspec.json.decode(msgspec.json.encode(state), type=OrganizationState)


def stream_cases(model: ScoreModel | None = None) -> list[Case]:
    model = model or v1_model()
    cases: list[Case] = []
    for state in stream_states(SIMULATION, BATCHES):
        assert state.last_event_at is not None
        cases.extend((state, state.last_event_at + days * DAY, model) for days in LATER_DAYS)
    return cases


# signals added to the state since the corpora were recorded (issue 13; v1 never reads them)
ADDED_SIGNALS = ("activity_baseline", "activity_recent", "logins_baseline")


def edge_state(rng: random.Random) -> OrganizationState:
    tenure = rng.choice([0.0, 0.5, 3.0, 29.0, 30.0, 89.0, 90.0, 120.0, 400.0, rng.uniform(0, 500)])
    first = NOW - tenure * DAY
    start = first - 60 * DAY
    kinds = [None, "complaint", "escalation", "cancellation_request", "check_in"]
    today = int(NOW // DAY)
    return OrganizationState(
        organization_id=f"org-{rng.randrange(10**6)}",
        first_event_at=first if rng.random() > 0.03 else None,
        last_event_at=NOW,
        last_usage_at=rng.choice([None, rng.uniform(first, NOW)]),
        decay_ref=rng.choice([None, rng.uniform(first, NOW), NOW + DAY]),
        support_decay_ref=rng.choice([None, rng.uniform(first, NOW), NOW + DAY]),
        decayed={
            signal: rng.choice([0.0, rng.uniform(0, 60), rng.uniform(0, 2)])
            for signal in SIGNALS
            if signal not in ADDED_SIGNALS
            if rng.random() < 0.8
        },
        users={f"u{i}": rng.uniform(start, NOW) for i in range(rng.choice([0, 1, 3, 12, 60]))},
        features={
            f"f{i}": [float(rng.randint(1, 50)), rng.uniform(start, NOW)]
            for i in range(rng.randint(0, 12))
        },
        open_interactions={
            f"i{i}": OpenInteraction(
                opened_at=rng.uniform(first, NOW),
                interaction_type=rng.choice(kinds),
                priority=rng.choice([None, "low", "normal", "urgent"]),
                escalated=rng.random() < 0.3,
            )
            for i in range(rng.choice([0, 0, 1, 2, 6]))
        },
        milestones={m.value: first for m in MilestoneType if rng.random() < 0.5},
        daily_scores={
            str(today - back): round(rng.uniform(0, 100), 2)
            for back in rng.sample(range(-1, 40), rng.randint(0, 8))
        },
    )


def edge_cases(v2: bool = False) -> list[Case]:
    rng = random.Random(EDGE_SEED)
    models = (v2_model(),) if v2 else (v1_model(), stress_model())
    cases: list[Case] = []
    for _ in range(EDGE_STATES):
        state = edge_state(rng)
        as_of = NOW + rng.choice([0.0, -DAY, 3 * DAY, rng.uniform(0, 40 * DAY)])
        cases.extend((state, as_of, model) for model in models)
    return cases


def scored(cases: Iterable[Case]) -> Iterator[Scores]:
    """(explained, unexplained) score of each case; scoring leaves the state alone."""
    for state, as_of, model in cases:
        before = msgspec.json.encode(state)
        yield score(state, as_of, model), score(state, as_of, model, explain=False)
        assert msgspec.json.encode(state) == before


_ENCODER = msgspec.json.Encoder()


def score_digest(results: Iterable[Scores]) -> str:
    """Every field of both scores but the risk factors: what a score says."""
    digest = hashlib.sha256()
    for explained, unexplained in results:
        unexplained_part = msgspec.structs.replace(explained, risk_factors=[])
        digest.update(
            _ENCODER.encode(unexplained_part) + b"\n" + _ENCODER.encode(unexplained) + b"\n"
        )
    return digest.hexdigest()


def explanation_digest(results: Iterable[Scores]) -> str:
    """The risk factors of the explained scores, in order: how a score explains itself."""
    digest = hashlib.sha256()
    for explained, _unexplained in results:
        digest.update(_ENCODER.encode(explained.risk_factors) + b"\n")
    return digest.hexdigest()


def input_digest(cases: Iterable[Case]) -> str:
    """The corpus itself, without what scores write into a state (history, alerts)."""
    digest = hashlib.sha256()
    for state, as_of, model in cases:
        unscored = msgspec.structs.replace(
            state,
            daily_scores={},
            last_score=None,
            last_scored_at=None,
            last_churn_probability=None,
            alert=AlertState(),
        )
        line = approximately(msgspec.to_builtins((unscored, as_of, model)))
        assert isinstance(line, list)
        digest.update(msgspec.json.encode(without_later_additions(line)) + b"\n")
    return digest.hexdigest()


def without_later_additions(line: list[object]) -> list[object]:
    """The corpus as it was recorded: fields and a signal added to the state and the
    model config since (issue 12: the last churn probability; issue 13: the account's
    creation date from a profile, the
    activity baseline and recent signals, the activity_decline factor's settings, v4's
    logins-per-user and feature-share settings, the login baseline signal and
    login_decline settings, the alert persistence and decline gate, the changelog and
    embedded figures, the usage reference `healthscore adapt` reads)
    are left out while they hold what v1 gives them. v1 scores never read them (their
    points are 0), so the output digests pin v1 unchanged."""
    state, as_of, model = line
    assert isinstance(state, dict) and isinstance(model, dict)
    state = dict(state)
    if state.get("created_at") is None:
        state.pop("created_at", None)
    if state.get("last_churn_probability") is None:
        state.pop("last_churn_probability", None)
    alert = dict(state["alert"])
    if alert.get("above_since") is None:
        alert.pop("above_since", None)
    state["alert"] = alert
    added = ADDED_SIGNALS
    state["decayed"] = {k: v for k, v in state["decayed"].items() if k not in added}
    model = dict(model)
    if model.get("changelog") == [] and model.get("evaluation") is None:
        model.pop("changelog", None)
        model.pop("evaluation", None)
    if model.get("usage_reference", 0) is None:
        model.pop("usage_reference")
    model["half_life_days"] = {k: v for k, v in model["half_life_days"].items() if k not in added}
    engagement = dict(model["engagement"])
    if engagement.get("decline_points") == 0.0:
        engagement.pop("decline_points")
        engagement.pop("decline_full")
        engagement.pop("decline_prior_events")
    if engagement.get("login_per_user_points") == 0.0:
        engagement.pop("login_per_user_points")
        engagement.pop("login_per_user_scale")
    if engagement.get("login_decline_points") == 0.0:
        engagement.pop("login_decline_points")
        engagement.pop("login_decline_full")
        engagement.pop("login_decline_prior")
    model["engagement"] = engagement
    adoption = dict(model["adoption"])
    if adoption.get("feature_share_points") == 0.0:
        adoption.pop("feature_share_points")
        adoption.pop("feature_share_full")
    model["adoption"] = adoption
    alerts = dict(model["alerts"])
    if alerts.get("persist_hours") == 0.0 and alerts.get("immediate_probability") is None:
        alerts.pop("persist_hours")
        alerts.pop("immediate_probability")
    if alerts.get("decline_points", 0.0) is None:
        alerts.pop("decline_points")
    model["alerts"] = alerts
    ceilings = dict(model["ceilings"])
    if ceilings.get("follow_signals") is False:
        ceilings.pop("follow_signals")
    model["ceilings"] = ceilings
    return [state, as_of, model]


def approximately(value: object) -> object:
    """Floats to 9 significant digits. The decayed sums come from exp2 (libm), whose
    last bit may differ between platforms; the outputs, rounded to 2 or 4 decimals,
    practically never show such a bit, but the raw sums would."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {key: approximately(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [approximately(item) for item in value]
    return value


@pytest.fixture(scope="module")
def corpora() -> Corpora:
    return {name: (cases, list(scored(cases))) for name, cases in all_cases().items()}


def all_cases() -> dict[str, list[Case]]:
    v1_stream = stream_cases()
    v2 = v2_model()
    return {
        "stream": v1_stream,
        "edge": edge_cases(),
        "stream_v2": [(state, as_of, v2) for state, as_of, _v1 in v1_stream],
        "edge_v2": edge_cases(v2=True),
    }


@pytest.mark.parametrize(
    ("corpus", "inputs", "scores", "explanations"),
    [
        ("stream", STREAM_INPUTS, STREAM_SCORES, STREAM_EXPLANATIONS),
        ("edge", EDGE_INPUTS, EDGE_SCORES, EDGE_EXPLANATIONS),
        ("stream_v2", STREAM_V2_INPUTS, STREAM_V2_SCORES, STREAM_V2_EXPLANATIONS),
        ("edge_v2", EDGE_V2_INPUTS, EDGE_V2_SCORES, EDGE_V2_EXPLANATIONS),
    ],
    ids=["stream", "edge", "stream_v2", "edge_v2"],
)
def test_every_output_is_bit_for_bit_the_recorded_one(
    corpora: Corpora,
    corpus: str,
    inputs: str,
    scores: str,
    explanations: str,
) -> None:
    cases, results = corpora[corpus]
    assert input_digest(cases) == inputs, (
        f"the {corpus} corpus itself changed (simulator, decoding or aggregation), so its "
        "output digests prove nothing: re-record them with a scoring you trust"
    )
    assert score_digest(results) == scores, f"score() numbers changed on the {corpus} corpus"
    assert explanation_digest(results) == explanations, (
        f"score() risk factors changed on the {corpus} corpus"
    )


def test_explain_only_adds_the_risk_factors(
    corpora: Corpora,
) -> None:
    for _cases, results in corpora.values():
        for explained, unexplained in results:
            assert unexplained.risk_factors == []
            assert msgspec.structs.replace(explained, risk_factors=[]) == unexplained


def test_risk_factors_are_what_their_constructor_builds(
    corpora: Corpora,
) -> None:
    declared = {field.name: field.type for field in msgspec.structs.fields(RiskFactor)}
    assert declared == {"factor": str, "value": float, "impact": float, "detail": str}
    for _cases, results in corpora.values():
        for explained, _unexplained in results:
            for factor in explained.risk_factors:
                fields = msgspec.structs.asdict(factor)
                assert type(factor) is RiskFactor
                # the constructor validates nothing: each field is of its declared type
                # (a count's int would write `3`, where the wire writes `3.0`)
                assert {name: type(v) for name, v in fields.items()} == declared
                # what the wire contract validates from it, and writes, is the same
                wire = contracts.RiskFactor(**fields)
                assert wire.model_dump() == fields
                assert wire.model_dump_json().encode() == msgspec.json.encode(factor)


def test_the_corpora_reach_every_branch(
    corpora: Corpora,
) -> None:
    """Without this, the digests could pin a corpus that misses what a change breaks."""
    seen: Counter[str] = Counter()
    for corpus, (cases, results) in corpora.items():
        for (state, as_of, model), (health, _unexplained) in zip(cases, results, strict=True):
            seen.update(f"factor {factor.factor}" for factor in health.risk_factors)
            seen[f"{corpus} segment {health.segment}"] += 1
            seen[f"status {health.status}"] += 1
            seen[f"risk {health.risk_level}"] += 1
            seen.update(
                f"{corpus} {name} at 0" for name in COMPONENTS if health.components[name] == 0
            )
            seen[f"change_7d known {health.change_7d is not None}"] += 1
            seen[f"change_30d known {health.change_30d is not None}"] += 1
            first = state.first_event_at
            if first is not None and as_of - first < model.segments.grace_days * DAY:
                seen[f"{corpus} grace"] += 1
            if state.open_interactions:
                seen[f"{corpus} open interactions"] += 1
    factors = {
        "inactivity", "low_activity", "few_logins", "few_active_users",
        "narrow_feature_adoption", "shallow_usage", "missing_milestones",
        "open_interactions", "open_escalations", "unresolved_interaction_age",
        "negative_sentiment", "complaints", "cancellation_request", "recent_escalations",
        "growth_baseline", "weak_commercial_momentum", "no_client_growth",
        "contraction_signals", "minor_factors",
        "ceiling_open_cancellation_request", "ceiling_open_escalation",
    }  # fmt: skip
    expected = {f"factor {name}" for name in factors} | {
        *(f"{corpus} segment {s}" for corpus in corpora for s in ("new", "established")),
        *(f"status {status}" for status in HealthStatus),
        *(f"risk {level}" for level in RiskLevel),
        "stream support at 0",
        "edge support at 0",
        "edge growth at 0",
        *(f"change_{n}d known {known}" for n in (7, 30) for known in (True, False)),
        "stream grace",
        "edge grace",
        "stream open interactions",
        "edge open interactions",
    }
    assert expected <= set(seen), sorted(expected - set(seen))
    # the ceilings bite in the realistic stream too, not only at the edges
    stream_factors = Counter(
        factor.factor for health, _ in corpora["stream"][1] for factor in health.risk_factors
    )
    assert stream_factors["ceiling_open_cancellation_request"] > 0
    assert stream_factors["ceiling_open_escalation"] > 0


if __name__ == "__main__":  # print the digests, to record them
    for name, cases in all_cases().items():
        print(f'{name.upper()}_INPUTS = "{input_digest(cases)}"')
        results = list(scored(cases))
        print(f'{name.upper()}_SCORES = "{score_digest(results)}"')
        print(f'{name.upper()}_EXPLANATIONS = "{explanation_digest(results)}"')
