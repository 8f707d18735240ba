"""Bearer token verification: HS256 with the shared secret, RS256 against a JWKS file."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from healthscore.api.auth import TokenVerifier, Unauthenticated, issue_hs256
from healthscore.api.cursor import Cursor, InvalidCursor, decode_cursor

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
    unsigned = jwt.encode({"sub": str(USER), "exp": 4102444800}, None, algorithm="none")
    with pytest.raises(Unauthenticated, match="not accepted"):
        verifier.verify(f"Bearer {unsigned}")
    no_exp = jwt.encode({"sub": str(USER)}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated, match="'exp'"):
        verifier.verify(f"Bearer {no_exp}")
    no_sub = jwt.encode({"exp": 4102444800}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated, match="'sub'"):
        verifier.verify(f"Bearer {no_sub}")


def test_audience_and_issuer_are_checked_when_configured() -> None:
    verifier = TokenVerifier(hs256_secret=SECRET.encode(), audience="dashboard", issuer="idp")
    good = issue_hs256(SECRET, USER, timedelta(minutes=5), audience="dashboard", issuer="idp")
    assert verifier.verify(f"Bearer {good}").user_id == USER
    for claims in ({"audience": "billing", "issuer": "idp"}, {"audience": "dashboard"}):
        token = issue_hs256(SECRET, USER, timedelta(minutes=5), **claims)
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
