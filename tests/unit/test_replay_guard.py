"""`replay --publish-alerts` beside a live service: what a DescribeGroups answer means.

aiokafka returns each group's error code in the answer rather than raising it; the
guard must refuse when it cannot tell, not read an error's empty member list as a
stopped service (review 34d M2). The answer's shape is the broker's (error code, group
id, state, protocol type, protocol, members, authorized operations); the integration
test (test_replay_determinism) runs the guard against the real broker.
"""

from __future__ import annotations

import pytest

from healthscore.errors import StartupRefused
from healthscore.service.replay import live_members

MEMBER = ("member-1", "client", "host", b"", b"")
GROUP_AUTHORIZATION_FAILED = 30
COORDINATOR_LOAD_IN_PROGRESS = 14


def test_members_of_a_live_group_are_counted() -> None:
    assert live_members("g", [(0, "g", "Stable", "consumer", "range", [MEMBER, MEMBER], -1)]) == 2
    assert live_members("g", [(0, "g", "Empty", "consumer", "", [], -1)]) == 0
    assert live_members("g", [(0, "g", "Dead", "", "", [], -1)]) == 0


@pytest.mark.parametrize("code", [GROUP_AUTHORIZATION_FAILED, COORDINATOR_LOAD_IN_PROGRESS])
def test_an_error_in_the_answer_refuses_rather_than_reads_as_stopped(code: int) -> None:
    with pytest.raises(StartupRefused, match=f"error code {code}.*Describe on that group"):
        live_members("g", [(code, "g", "", "", "", [], -1)])


def test_an_answer_without_the_group_refuses() -> None:
    with pytest.raises(StartupRefused, match="answered no group"):
        live_members("g", [])
