"""The read API against hostile or careless clients and identity providers (the
twenty-first session's round), over real PostgreSQL and real roles, never mocked."""

from __future__ import annotations

import jwt

from tests.integration import test_api
from tests.integration.test_api import World, assert_problem
from tests.utils.api import JWT_SECRET

world = test_api.world  # the API over the same organizations and users
LIST = "/api/v1/organizations"


async def test_a_token_expiring_past_year_9999_is_a_401_not_a_500(world: World) -> None:
    """An identity provider writing `exp` in milliseconds (1.8e12: year 58,000) or
    for ever: the signature is good, but no time this service holds is that late."""
    admin = str(world.users["admin"])
    for exp in (1_800_000_000_000, 253_402_300_800, 2**63, 1e300):
        token = jwt.encode({"sub": admin, "exp": exp}, JWT_SECRET, algorithm="HS256")
        for path in (LIST, f"{LIST}/{world.orgs['bloom']}", "/api/v1/me"):
            response = await world.client.get(path, headers={"Authorization": f"Bearer {token}"})
            body = assert_problem(response, 401)
            assert "exp" in body["detail"], (exp, body)
