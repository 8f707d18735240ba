"""Every alert decision of a realistic stream pinned by digest, apart from how its
score explains itself.

An alert carries the score, its risk factors and the path to healthy, which values
behavioural actions by the factors' impacts (`scoring.path`). A change of how the
risk factors are reported may re-record the explanation digests, never the decision
digests: the decisions (kind, episode, alert id, trigger, previous score, the path
and why it is empty), the scores and the states the stream leaves stay bit for bit.
Recorded on the simulator's stream of `tests.bench.decode_cpu` through
`compute_batch_effects` under every shipped model, with silence rescoring as `serve`
runs it; re-record deliberately (run this file: it prints them).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from healthscore.core.effects import BatchEffects, compute_batch_effects
from healthscore.core.interactions import InteractionRecord
from healthscore.core.scoring.model import ScoreModel, shipped_models
from healthscore.core.scoring.state import OrganizationState
from healthscore.service.ingest.decode import Decoded, Decoder
from tests.bench.decode_cpu import SUPPORT, USAGE, stream

EVENTS, ORGANIZATIONS, SEED = 12_000, 300, 11
BATCH = 1_000
SILENCE_STEP = 6 * 3600.0

# (decisions and scores, explanations) by model version, recorded in explain23 on the
# code before the risk factors were apportioned; the explanations re-recorded when they
# were made to sum exactly to score - 100 (the decisions did not move); the decisions of
# v2-v4 re-recorded when a behavioural action took its factor's listed impact (only
# the paths' impacts moved, by hundredths: checked with the impacts zeroed); every
# decision digest re-recorded when alert ids took the raise's event-time day, decisions
# their episode_id and the alert state `dated_ids` (the digests with the three
# neutralized are equal before and after)
PINS = {
    "v1": (
        "afd23716cf433f663cf7c19cdf5ee1223e59d6b0a67fce2a71fe923f551f8380",
        "a025057d451aa0057b56b3f2aa2c9e0ebdfb193b4c402ce60e9a5c276c201bab",
    ),
    "v2": (
        "3f14335a00dbffa9a6ed6192163cd1b2e85ca8fffd2bd0c98d1c60d5a6aed5b8",
        "4ae52eea65299954df2e9d4628a862a098537ec52def32986841baa1f663df79",
    ),
    "v3": (
        "04d0616d46fedcfad17c602de079b565357b646e99fee5a049606bda4ce4e835",
        "6da636ff50ae1819d052c8f1dec4f6accc39ff29cc67e0ea5e2437919bfdd2bd",
    ),
    "v4": (
        "414d7546975f885952d04097430d84168e156a7b11cd5de839108d7fb314d5ef",
        "96d992ee72f96c4a8ac26f81a60bbf5c8938a31af4092c94da1a9a13a690797b",
    ),
}

_ENCODER = msgspec.json.Encoder()


def effects(model: ScoreModel) -> Iterator[BatchEffects]:
    decoder = Decoder(USAGE, SUPPORT, 64 * 1024)
    decoded = [decoder.decode(record) for record in stream(EVENTS, ORGANIZATIONS, SEED)]
    applied = [item.event for item in decoded if isinstance(item, Decoded)]
    states: dict[str, OrganizationState] = {}
    interactions: dict[str, InteractionRecord] = {}
    for start in range(0, len(applied), BATCH):
        batch = applied[start : start + BATCH]
        done = compute_batch_effects(
            batch, states, interactions, model, SILENCE_STEP, keep_scores=True
        )
        states.update(done.states)
        interactions.update(done.interactions)
        yield done


def digests(model: ScoreModel) -> tuple[str, str, Counter[str]]:
    """(decisions and scores, explanations, what the alerts' paths name) of the stream."""
    decided, explained = hashlib.sha256(), hashlib.sha256()
    named: Counter[str] = Counter()
    for done in effects(model):
        scores = [r.health for r in done.scores] + [a.health for a in done.alerts]
        decided.update(
            _ENCODER.encode(
                [
                    sorted(done.states.items()),
                    [
                        (r.organization_id, r.previous_score, r.scored_at, r.cause)
                        for r in done.scores
                    ],
                    [(a.organization_id, a.decision, a.scored_at) for a in done.alerts],
                    [msgspec.structs.replace(health, risk_factors=[]) for health in scores],
                ]
            )
        )
        explained.update(_ENCODER.encode([health.risk_factors for health in scores]))
        for alert in done.alerts:
            named.update(action.factor for action in alert.decision.path_to_healthy)
    return decided.hexdigest(), explained.hexdigest(), named


@pytest.mark.parametrize("version", sorted(PINS))
def test_alert_decisions_are_bit_for_bit_the_recorded_ones(version: str) -> None:
    decisions, explanations, named = digests(shipped_models()[version])
    assert decisions == PINS[version][0], f"an alert decision or a score changed under {version}"
    assert explanations == PINS[version][1], f"the risk factors changed under {version}"
    # the paths value behavioural actions by the factors' impacts: the pin covers some
    assert sum(named[factor] for factor in named if not factor.startswith("open_")) > 0


if __name__ == "__main__":  # print the pins, to record them
    for version in sorted(PINS):
        decisions, explanations, _named = digests(shipped_models()[version])
        print(f'    "{version}": ("{decisions}", "{explanations}"),')


def test_the_contract_lists_every_risk_factor_name_a_score_reports() -> None:
    # a notification template is keyed on the names: the published schema lists them
    # (x-known-values), and every shipped model's scores and paths report only those
    schema = json.loads(
        (Path(__file__).parents[2] / "schema/contracts/customer.churn-risk.v1.json").read_text()
    )
    known = set(schema["$defs"]["RiskFactor"]["properties"]["factor"]["x-known-values"])
    assert set(schema["$defs"]["HealthAction"]["properties"]["factor"]["x-known-values"]) == known
    reported: set[str] = set()
    for model in shipped_models().values():
        for done in effects(model):
            for health in [r.health for r in done.scores] + [a.health for a in done.alerts]:
                reported.update(f.factor for f in health.risk_factors)
            for alert in done.alerts:
                reported.update(a.factor for a in alert.decision.path_to_healthy)
    assert reported - known == set()
    assert len(reported) >= 10, reported  # the stream exercises many of them
