"""Bearer token verification: HS256 with the shared secret, RS256 against a JWKS file."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr, ValidationError

from healthscore.api.auth import TokenVerifier, Unauthenticated, issue_hs256
from healthscore.api.cursor import Cursor, InvalidCursor, decode_cursor
from healthscore.api.dev import DevSetupFailed
from healthscore.api.server import dev_config
from healthscore.api.state import ApiConfig, ApiConfigError
from healthscore.config import Settings

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
USER = uuid.uuid4()


def test_hs256_token_names_its_user_and_expiry() -> None:
    verifier = TokenVerifier(hs256_secret=SECRET.encode())
    token = issue_hs256(SECRET, USER, timedelta(minutes=5))
    principal = verifier.verify(f"Bearer {token}")
    assert principal.user_id == USER
    assert principal.expires_at > datetime.now(UTC)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "required"),
        ("", "required"),
        ("Token abc", "Bearer"),
        ("Bearer", "Bearer"),
        ("Bearer abc.def", "not a JWT"),
    ],
)
def test_malformed_headers_are_refused(header: str | None, reason: str) -> None:
    with pytest.raises(Unauthenticated, match=reason):
        TokenVerifier(hs256_secret=SECRET.encode()).verify(header)


def test_expired_forged_and_unsigned_tokens_are_refused() -> None:
    verifier = TokenVerifier(hs256_secret=SECRET.encode())
    expired = issue_hs256(SECRET, USER, timedelta(minutes=-5))
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(f"Bearer {expired}")
    forged = issue_hs256("another-secret-of-the-same-length-0123456", USER, timedelta(minutes=5))
    with pytest.raises(Unauthenticated, match="not valid"):
        verifier.verify(f"Bearer {forged}")
    # "none" takes no key: PyJWT's annotation has no None, and it reads "" as None
    unsigned = jwt.encode({"sub": str(USER), "exp": 4102444800}, "", algorithm="none")
    with pytest.raises(Unauthenticated, match="not accepted"):
        verifier.verify(f"Bearer {unsigned}")
    no_exp = jwt.encode({"sub": str(USER)}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated, match="'exp'"):
        verifier.verify(f"Bearer {no_exp}")
    no_sub = jwt.encode({"exp": 4102444800}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated, match="'sub'"):
        verifier.verify(f"Bearer {no_sub}")
    # a time written as a string: PyJWT read "4102444800" as the number (review 37b L2)
    for claim in ("exp", "nbf", "iat"):
        times: dict[str, object] = {"sub": str(USER), "exp": 4102444800, claim: "1700000000"}
        if claim == "exp":
            times["exp"] = "4102444800"
        written = jwt.encode(times, SECRET, algorithm="HS256")
        with pytest.raises(Unauthenticated, match=f"'{claim}' is not a number"):
            verifier.verify(f"Bearer {written}")


def test_audience_and_issuer_are_checked_when_configured() -> None:
    verifier = TokenVerifier(hs256_secret=SECRET.encode(), audience="dashboard", issuer="idp")
    good = issue_hs256(SECRET, USER, timedelta(minutes=5), audience="dashboard", issuer="idp")
    assert verifier.verify(f"Bearer {good}").user_id == USER
    for audience, issuer in (("billing", "idp"), ("dashboard", None)):
        token = issue_hs256(SECRET, USER, timedelta(minutes=5), audience=audience, issuer=issuer)
        with pytest.raises(Unauthenticated):
            verifier.verify(f"Bearer {token}")


def _rsa_jwks(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public |= {"kid": "idp-1", "use": "sig", "alg": "RS256"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public]}))
    return key, path


def test_rs256_tokens_verify_against_the_identity_providers_jwks(tmp_path: Path) -> None:
    key, path = _rsa_jwks(tmp_path)
    verifier = TokenVerifier.from_files(None, path)
    claims = {"sub": str(USER), "exp": int((datetime.now(UTC) + timedelta(minutes=5)).timestamp())}
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "idp-1"})
    assert verifier.verify(f"Bearer {token}").user_id == USER
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, other, algorithm="RS256", headers={"kid": "idp-1"})
    with pytest.raises(Unauthenticated, match="not valid"):
        verifier.verify(f"Bearer {forged}")
    unknown_kid = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "idp-2"})
    with pytest.raises(Unauthenticated, match="key set"):
        verifier.verify(f"Bearer {unknown_kid}")
    # an HS256 token cannot pass where only the JWKS is configured (no key confusion)
    hs = issue_hs256(SECRET, USER, timedelta(minutes=5))
    with pytest.raises(Unauthenticated, match="not accepted"):
        verifier.verify(f"Bearer {hs}")


def test_cursors_round_trip_and_refuse_other_sorts_and_garbage() -> None:
    cursor = Cursor("churn_probability", "0.8200", USER)
    assert decode_cursor(cursor.encode(), "churn_probability") == cursor
    assert decode_cursor(Cursor("x", None, USER).encode(), "x").value is None
    with pytest.raises(InvalidCursor, match="sort=churn_probability"):
        decode_cursor(cursor.encode(), "health_score")
    for garbage in ("", "!!", "bm90IGpzb24", "WzEsMl0"):
        with pytest.raises(InvalidCursor):
            decode_cursor(garbage, "x")


def test_churn_range_of_risk_levels_follows_the_bands() -> None:
    from decimal import Decimal

    from healthscore.api.routes import _churn_range
    from healthscore.contracts.enums import RiskLevel as L

    assert _churn_range(None) == (True, None, None)
    assert _churn_range([L.HIGH]) == (True, Decimal("0.5"), Decimal("0.75"))
    assert _churn_range([L.CRITICAL, L.HIGH]) == (True, Decimal("0.5"), None)
    assert _churn_range([L.LOW]) == (True, Decimal("0"), Decimal("0.25"))
    # not contiguous: the hull, and the level list must stay
    assert _churn_range([L.LOW, L.CRITICAL]) == (False, Decimal("0"), None)


# --- verified tokens are remembered, never beyond their expiry, never for a forgery ------


def test_a_verified_token_is_remembered_until_it_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from healthscore.api import auth

    verifier = TokenVerifier(hs256_secret=SECRET.encode())
    token = issue_hs256(SECRET, USER, timedelta(minutes=5))
    calls: list[str] = []
    verify = TokenVerifier._verify

    def counting(self: TokenVerifier, raw: str) -> auth.Principal:
        calls.append(raw)
        return verify(self, raw)

    monkeypatch.setattr(TokenVerifier, "_verify", counting)
    first = verifier.verify(f"Bearer {token}")
    assert verifier.verify(f"Bearer {token}") == first
    assert len(calls) == 1 and len(verifier.verified) == 1

    # at its exp the remembered principal is gone and the token is checked again, and
    # refused: no leeway on exp (the database token minted for a request may not outlive
    # it, so a token within a leeway was refused there after all: review 32b, F4)
    exp = first.expires_at.timestamp()
    monkeypatch.setattr("healthscore.api.auth.time.time", lambda: exp)
    with pytest.raises(Unauthenticated, match="expired"), jwt_clock(exp):
        verifier.verify(f"Bearer {token}")
    assert len(calls) == 2 and len(verifier.verified) == 0  # not remembered at exp
    monkeypatch.setattr("healthscore.api.auth.time.time", lambda: exp - 1)
    assert verifier.verify(f"Bearer {token}") == first  # a second before it: accepted


def jwt_clock(at: float) -> Any:
    """PyJWT reads the clock through datetime.now(tz=UTC); pin it at `at`."""
    from unittest import mock

    fixed = datetime.fromtimestamp(at, UTC)

    class Clock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return fixed if tz is not None else fixed.replace(tzinfo=None)

    return mock.patch("jwt.api_jwt.datetime", Clock)


def test_an_expired_token_is_never_served_from_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = TokenVerifier(hs256_secret=SECRET.encode())
    # expired ten seconds ago: refused (no leeway on exp), and not remembered
    token = issue_hs256(SECRET, USER, timedelta(seconds=-10))
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(f"Bearer {token}")
    assert len(verifier.verified) == 0
    # a remembered entry is dropped, not served, once the clock passes its exp
    fresh = issue_hs256(SECRET, USER, timedelta(seconds=30))
    principal = verifier.verify(f"Bearer {fresh}")
    assert len(verifier.verified) == 1
    later = principal.expires_at.timestamp() + 3600
    monkeypatch.setattr("healthscore.api.auth.time.time", lambda: later)
    with pytest.raises(Unauthenticated, match="expired"), jwt_clock(later):
        verifier.verify(f"Bearer {fresh}")
    assert len(verifier.verified) == 0


def test_a_forged_token_is_never_served_from_memory() -> None:
    verifier = TokenVerifier(hs256_secret=SECRET.encode())
    good = issue_hs256(SECRET, USER, timedelta(minutes=5))
    assert verifier.verify(f"Bearer {good}").user_id == USER
    # the same claims signed with another secret, and the good token with its
    # signature altered: different strings, so verified (and refused) each time
    forged = issue_hs256("another-secret-of-the-same-length-0123456", USER, timedelta(minutes=5))
    header, claims, signature = good.split(".")
    altered = ".".join(
        [header, claims, signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")]
    )
    for bad in (forged, altered, good + "x", " " + good + "."):
        for _ in range(2):
            with pytest.raises(Unauthenticated):
                verifier.verify(f"Bearer {bad}")
    assert len(verifier.verified) == 1
    # a verifier with another secret remembers nothing of this one's tokens
    other = TokenVerifier(hs256_secret=b"a-different-deployment-secret-0123456789")
    with pytest.raises(Unauthenticated, match="not valid"):
        other.verify(f"Bearer {good}")


def test_remembered_tokens_are_bounded_least_recently_used_first() -> None:
    from healthscore.api.auth import VerifiedTokens

    verifier = TokenVerifier(hs256_secret=SECRET.encode(), verified=VerifiedTokens(size=3))
    tokens = [issue_hs256(SECRET, uuid.uuid4(), timedelta(minutes=5)) for _ in range(4)]
    for token in tokens[:3]:
        verifier.verify(f"Bearer {token}")
    verifier.verify(f"Bearer {tokens[0]}")  # used again: now the most recent
    verifier.verify(f"Bearer {tokens[3]}")  # evicts tokens[1], the least recently used
    assert len(verifier.verified) == 3
    now = datetime.now(UTC).timestamp()
    assert verifier.verified.get(tokens[1], now) is None
    assert verifier.verified.get(tokens[0], now) is not None


def test_only_tokens_this_process_minted_are_sent_inline() -> None:
    from healthscore.api.session import SEARCH_SETTINGS, IdentityBindingFailed, begin_as
    from healthscore.store.identity import SigningKey, mint_token

    key = SigningKey(7, bytes(range(32)))
    expires_at = datetime.now(UTC) + timedelta(minutes=1)
    token = mint_token(key, USER, expires_at=expires_at, backend_pid=4242)
    assert token.startswith("v2.7.") and ".4242." in token
    assert begin_as(token) == f"BEGIN; SELECT app_login('{token}')"
    assert "force_generic_plan" in begin_as(token, generic_plans=True)
    assert SEARCH_SETTINGS in begin_as(token, searching=True)
    # a token good in any session is never sent as statement text
    unbound = mint_token(key, USER, expires_at=expires_at)
    for bad in (token + "'", "x'); DROP TABLE customer_health; --", token.upper(), "", unbound):
        with pytest.raises(IdentityBindingFailed):
            begin_as(bad)


@pytest.mark.parametrize(
    ("key", "reason"),
    [("0123456789abcdef" * 3, "at least 32 bytes"), ("not hex at all", "non-hexadecimal")],
)
def test_a_signing_key_too_short_or_not_hex_is_a_configuration_problem(
    key: str, reason: str
) -> None:
    """A 24-byte API_DB_SIGNING_KEY ended `healthscore api` in a traceback (the key's own
    check raised past the configuration's); now it is named with the other problems."""
    settings = Settings(
        _env_file=None,
        database_url=SecretStr("postgresql://db/x"),
        api_jwt_secret=SecretStr("j" * 32),
        api_db_signing_key_id=1,
        api_db_signing_key=SecretStr(key),
    )
    with pytest.raises(ApiConfigError, match=f"API_DB_SIGNING_KEY: .*{reason}"):
        ApiConfig.from_settings(settings)


def test_an_identity_providers_keys_are_taken_only_with_the_audience(tmp_path: Path) -> None:
    """An identity provider signs the tokens of every application it serves with the keys
    of its JWKS: without API_JWT_AUDIENCE a token it issued to another application (that
    application's, replayed here) was a valid credential of the API (RFC 8725, 3.9)."""
    key, path = _rsa_jwks(tmp_path)
    claims = {"sub": str(USER), "aud": "another-application", "exp": 4102444800}
    elsewhere = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "idp-1"})

    def settings(audience: str | None) -> Settings:
        return Settings(
            _env_file=None,
            database_url=SecretStr("postgresql://db/x"),
            api_jwks_path=path,
            api_jwt_audience=audience,
            api_db_signing_key_id=1,
            api_db_signing_key=SecretStr("ab" * 32),
        )

    with pytest.raises(ApiConfigError, match="API_JWT_AUDIENCE"):
        ApiConfig.from_settings(settings(None))
    with pytest.raises(ValidationError, match="api_jwt_audience"):  # not taken as unset
        settings("")
    config = ApiConfig.from_settings(settings("dashboard"))
    with pytest.raises(Unauthenticated, match="Audience"):
        config.verifier.verify(f"Bearer {elsewhere}")


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("hunter2", "at least 32 bytes"),
        ("j" * 31, "at least 32 bytes"),
        # deploy/compose/env.example's, as copied to .env and never changed
        ("change-me-identity-provider-secret", "example's placeholder"),
        ("CHANGE-ME-IDP-SECRET-of-more-than-32-bytes", "example's placeholder"),
    ],
)
def test_an_hs256_secret_anyone_could_guess_is_refused(secret: str, reason: str) -> None:
    """API_JWT_SECRET signs the identity provider's tokens: whoever knows it is anybody,
    an admin included. "hunter2", or the compose example's placeholder kept in .env, was
    taken; any token the API ever answered (a browser's history, a proxy's log) let
    anyone find a short secret offline, and the placeholder is public. RFC 7518, 3.2:
    an HS256 key has at least the hash's 256 bits."""
    with pytest.raises(ValidationError, match=reason) as refused:
        Settings(_env_file=None, api_jwt_secret=SecretStr(secret))
    assert secret not in str(refused.value)  # never the value
    Settings(_env_file=None, api_jwt_secret=SecretStr("j" * 32))


@pytest.mark.parametrize(
    "setting", [{"api_jwt_secret": SecretStr("j" * 32)}, {"api_jwks_path": Path(__file__)}]
)
def test_dev_sign_in_is_refused_beside_an_identity_providers_key(
    setting: dict[str, Any],
) -> None:
    """`api --dev` signed its printed links with API_JWT_SECRET when it was set: twelve
    hours of admin access in a terminal's scrollback or a CI log, under the identity
    provider's own secret. Refused before anything is read or written."""
    settings = Settings(
        _env_file=None, database_url=SecretStr("postgresql://nobody@127.0.0.1:1/x"), **setting
    )
    with pytest.raises(DevSetupFailed, match="unset API_JWT_SECRET and API_JWKS_PATH"):
        asyncio.run(dev_config(settings))
