"""The read API against hostile or careless clients and identity providers (the
twenty-first session's round), over real PostgreSQL and real roles, never mocked."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from healthscore.api.auth import JWKS_RECHECK_SECONDS, TokenVerifier
from tests.integration import test_api
from tests.integration.test_api import World, assert_problem
from tests.utils.api import JWT_SECRET, api_client, api_config, api_login

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


async def test_a_kid_naming_a_key_of_another_type_in_the_jwks_is_a_401(
    world: World, pg_admin_url: str, tmp_path: Path
) -> None:
    """An identity provider's key set often holds EC (ES256) keys beside its RSA ones, or
    a symmetric one; the set is public, so anybody can name such a key's `kid` in an
    RS256 token. That was a 500 (PyJWT's TypeError or InvalidKeyError, past the
    verifier's handlers): only the set's RS256 keys verify an RS256 token."""
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signer.public_key()))
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key))
    oct_jwk = {"kty": "oct", "k": "c2VjcmV0LW9mLWFub3RoZXItYXBwbGljYXRpb24"}
    keys = [rsa_jwk | {"kid": "rsa"}, ec_jwk | {"kid": "ec"}, oct_jwk | {"kid": "oct"}]
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    verifier = TokenVerifier.from_files(None, path, audience="dashboard")
    async with api_login(pg_admin_url, world.url) as login_url:
        config = replace(await api_config(world.url, login_url), verifier=verifier)
        async with api_client(config) as (client, _):
            claims = {
                "sub": str(world.users["admin"]),
                "exp": int(time.time()) + 300,
                "aud": "dashboard",
            }
            for kid, status in (("rsa", 200), ("ec", 401), ("oct", 401)):
                token = jwt.encode(claims, signer, algorithm="RS256", headers={"kid": kid})
                response = await client.get(LIST, headers={"Authorization": f"Bearer {token}"})
                if status == 200:
                    assert response.status_code == 200, response.text
                else:
                    assert "key set" in assert_problem(response, 401)["detail"], kid


async def test_a_reward_delivered_at_a_time_postgresql_cannot_hold_is_a_422(world: World) -> None:
    """`delivered_at` is any aware time to pydantic; one whose UTC instant falls outside
    years 1-9999 (year 1 at +14:00, 9999-12-31 at -14:00) could not be sent to
    PostgreSQL: a 500, the reward left pending."""
    base = f"{LIST}/{world.orgs['bloom']}/milestones/first_client_added"
    assert (await world.post("admin", f"{base}/acknowledge")).status_code == 200
    for when in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        response = await world.post(
            "admin", f"{base}/reward", {"outcome": "delivered", "delivered_at": when}
        )
        assert "delivered_at" in assert_problem(response, 422)["detail"], when
    milestone = (await world.get("admin", f"{LIST}/{world.orgs['bloom']}/milestones")).json()
    assert {m["milestone_type"]: m["reward_status"] for m in milestone["items"]}[
        "first_client_added"
    ] == "pending"


def _rsa_jwks(path: Path, *keys: tuple[str, rsa.RSAPrivateKey]) -> None:
    public = [
        json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())) | {"kid": kid}
        for kid, key in keys
    ]
    # as a mounted secret is updated: a new file moved into place
    staged = path.with_suffix(".new")
    staged.write_text(json.dumps({"keys": public}))
    staged.replace(path)


async def test_the_identity_providers_key_rotation_is_followed_without_a_restart(
    world: World, pg_admin_url: str, tmp_path: Path
) -> None:
    """The identity provider rotates its signing keys (a schedule, or a key withdrawn as
    compromised) and the operator's mounted JWKS file follows. The API read the file
    once at start: every token signed with the new key was a 401 ('not in the configured
    key set') until each API process restarted, and the withdrawn key's tokens, remembered
    as verified, kept being served. The file is read again when it changes: the new key
    verifies, the withdrawn one's tokens are refused, those remembered included."""
    old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "jwks.json"
    _rsa_jwks(path, ("2026-11", old))
    verifier = TokenVerifier.from_files(None, path, audience="dashboard")
    claims = {"sub": str(world.users["admin"]), "exp": int(time.time()) + 300, "aud": "dashboard"}
    signed_old = jwt.encode(claims, old, algorithm="RS256", headers={"kid": "2026-11"})
    signed_new = jwt.encode(claims, new, algorithm="RS256", headers={"kid": "2026-12"})
    async with api_login(pg_admin_url, world.url) as login_url:
        config = replace(await api_config(world.url, login_url), verifier=verifier)
        async with api_client(config) as (client, _):

            async def status(token: str) -> int:
                response = await client.get(LIST, headers={"Authorization": f"Bearer {token}"})
                return response.status_code

            assert await status(signed_old) == 200
            assert await status(signed_new) == 401
            _rsa_jwks(path, ("2026-12", new))  # the old key withdrawn
            statuses: tuple[int, int] = (0, 0)
            async with asyncio.timeout(10):
                while statuses != (200, 401):
                    await asyncio.sleep(0.2)
                    statuses = (await status(signed_new), await status(signed_old))
            # and a file that cannot be read keeps the keys last read (logged)
            path.write_text("{not json")
            await asyncio.sleep(JWKS_RECHECK_SECONDS + 0.5)
            assert (await status(signed_new), await status(signed_old)) == (200, 401)


async def test_a_reward_body_naming_a_key_twice_is_a_422_and_records_nothing(
    world: World,
) -> None:
    """`{"outcome": "delivered", "outcome": "declined"}`: the API's parser keeps the last
    value and recorded the reward declined, while a reader that keeps the first (an
    audit proxy, a WAF, the client's own log) saw it delivered; RFC 8259 leaves names
    that are not unique to each parser. As on the topics (`duplicate_key`), a key twice
    is refused, naming it, and nothing is written."""
    base = f"{LIST}/{world.orgs['bloom']}/milestones/first_client_added"
    assert (await world.post("admin", f"{base}/acknowledge")).status_code == 200
    for body in (
        b'{"outcome": "delivered", "outcome": "declined"}',
        b'{"outcome": "delivered", "delivered_at": null, "delivered_at": "2026-12-01T00:00:00Z"}',
    ):
        response = await world.client.post(
            f"{base}/reward",
            content=body,
            headers={**world.auth("admin"), "Content-Type": "application/json"},
        )
        assert "twice" in assert_problem(response, 422)["detail"], body
    milestones = (await world.get("admin", f"{LIST}/{world.orgs['bloom']}/milestones")).json()
    assert {m["milestone_type"]: m["reward_status"] for m in milestones["items"]}[
        "first_client_added"
    ] == "pending"


async def test_a_reward_delivered_before_its_milestone_or_in_the_future_is_a_422(
    world: World,
) -> None:
    """A delivery dated before the milestone was achieved, or ahead of the clock (a year
    typed wrong), was recorded as given: the reward's history then said it happened
    then. Both are 422s naming the rule, and the reward stays pending."""
    org = world.orgs["bloom"]
    base = f"{LIST}/{org}/milestones/first_client_added"
    assert (await world.post("admin", f"{base}/acknowledge")).status_code == 200
    milestones = (await world.get("admin", f"{LIST}/{org}/milestones")).json()["items"]
    [milestone] = [m for m in milestones if m["milestone_type"] == "first_client_added"]
    achieved = datetime.fromisoformat(milestone["achieved_at"])
    early = (achieved - timedelta(days=1)).isoformat()
    late = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    for when, said in ((early, "before the milestone was achieved"), (late, "in the future")):
        response = await world.post(
            "admin", f"{base}/reward", {"outcome": "delivered", "delivered_at": when}
        )
        assert said in assert_problem(response, 422)["detail"], when
    milestones = (await world.get("admin", f"{LIST}/{org}/milestones")).json()["items"]
    assert {m["milestone_type"]: m["reward_status"] for m in milestones}[
        "first_client_added"
    ] == "pending"
    # at the instant it was achieved, and now, are deliveries
    response = await world.post(
        "admin", f"{base}/reward", {"outcome": "delivered", "delivered_at": achieved.isoformat()}
    )
    assert response.status_code == 200, response.text
