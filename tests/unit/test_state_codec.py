"""The stored form of a state (`pack_state`) holds exactly what the JSON form does, and
`unpack_state` reads both (JSON is what releases before migration 0066 stored)."""

from __future__ import annotations

import msgspec

from healthscore.core.alignment import align
from healthscore.core.effects import compute_batch_effects
from healthscore.core.interactions import InteractionRecord
from healthscore.core.scoring.model import default_model
from healthscore.core.scoring.state import (
    OpenBeyond,
    OpenInteraction,
    OrganizationState,
    decode_state,
    encode_state,
    pack_state,
    unpack_state,
)
from healthscore.service.ingest.decode import Decoded, Decoder
from tests.bench.core_cpu import stream
from tests.bench.decode_cpu import SUPPORT, USAGE


def _simulated_states() -> list[OrganizationState]:
    decoder = Decoder(USAGE, SUPPORT, 64 * 1024)
    states: dict[str, OrganizationState] = {}
    interactions: dict[str, InteractionRecord] = {}
    records = stream(6_000, 150, seed=5)
    for start in range(0, len(records), 1_000):
        items = [decoder.decode(r) for r in records[start : start + 1_000]]
        events = [i.event for i in align(items, None).applied if isinstance(i, Decoded)]
        compute_batch_effects(events, states, interactions, default_model(), 6 * 3600.0)
    return list(states.values())


def test_packed_and_json_forms_read_back_the_same_state() -> None:
    states = _simulated_states()
    assert len(states) == 150
    # the simulator's states carry every kind of field the struct has
    assert any(s.open_interactions for s in states) and any(s.alert.episode for s in states)
    for state in states:
        packed = pack_state(state)
        assert packed[:1] != b"{"
        assert unpack_state(packed) == state
        assert unpack_state(encode_state(state)) == state == decode_state(encode_state(state))
        # byte for byte: a held state compared with a stored one is compared exactly
        assert pack_state(unpack_state(packed)) == packed


def test_the_fields_no_simulated_state_reaches() -> None:
    state = OrganizationState(
        organization_id="o",
        open_interactions={"i": OpenInteraction(1.5, "escalation", "urgent", True)},
        open_beyond=OpenBeyond(count=3, escalated=1, cancellations=1, since=2.5),
        created_at=-86_400.25,
        last_churn_probability=1e-300,
    )
    assert unpack_state(pack_state(state)) == state
    assert msgspec.to_builtins(unpack_state(pack_state(state))) == msgspec.to_builtins(state)
