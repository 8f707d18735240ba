"""The organization states a consumer holds between batches.

Records are keyed by organization, so a consumer owns the organizations of
its partitions: between two of its batches nobody but the silence sweep (and
a replica during a rebalance) writes their state. Holding the states it
wrote, with the `health_version` each got, spares a batch the read and row
lock of every organization it touches (and their decoding). Ownership is a
matter of speed only, never of correctness: every save is checked against
the version the state was computed from (`sql.SAVE_STATES_CHECKED`), and an
organization another writer changed meanwhile is loaded under lock and its
events computed again in the same transaction.

A batch takes its organizations' states out (`take`) and gives back only
what its transaction committed (`give_back`): a batch that fails leaves
nothing half-applied behind, since the states it mutated are dropped and
loaded again. States are held as the bytes the batch saved (`pack_state`: a
fraction of a decoded state's memory), decoded when taken, as a read would; bounded: the
least recently used beyond `capacity` go.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

from healthscore.core.scoring.state import OrganizationState, unpack_state


class OwnedStates:
    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._held: OrderedDict[str, tuple[bytes, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def take(
        self, organizations: Iterable[str]
    ) -> tuple[dict[str, OrganizationState], dict[str, int], list[str]]:
        """Remove and return the held states of `organizations`, their versions, the rest."""
        states: dict[str, OrganizationState] = {}
        versions: dict[str, int] = {}
        missing: list[str] = []
        held = self._held
        for org in organizations:
            entry = held.pop(org, None)
            if entry is None:
                missing.append(org)
            else:
                states[org] = unpack_state(entry[0])
                versions[org] = entry[1]
        return states, versions, missing

    def absent(self, organizations: Iterable[str]) -> list[str]:
        """Those of `organizations` whose state is not held (a batch reads them)."""
        held = self._held
        return [org for org in organizations if org not in held]

    def give_back(self, saved: Mapping[str, tuple[bytes, int]]) -> None:
        """Hold the committed states (as saved, with their versions), most recently used."""
        if self._capacity <= 0:
            return
        held = self._held
        for org, entry in saved.items():
            held[org] = entry
            held.move_to_end(org)
        while len(held) > self._capacity:
            held.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (partitions revoked: the next owner may write them)."""
        self._held.clear()
