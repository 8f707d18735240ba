"""Identity tokens minted in Python: HMAC-SHA256 per RFC 4231, the format app_login() parses.

That the SQL verifier accepts exactly these tokens (and its HMAC agrees) is
checked against the real database in tests/integration/test_rls.py.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from healthscore.store.identity import (
    InvalidIdentityToken,
    SigningKey,
    mint_token,
    signature,
)

# the pattern app_login() (schema/migrations/0020_verified_identity.sql) accepts
SQL_TOKEN_PATTERN = re.compile(
    r"^v1\.([1-9][0-9]{0,8})\."
    r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\."
    r"([0-9]{1,12})\.([0-9a-f]{64})$"
)

KEY = SigningKey(7, bytes(range(64)))
USER = uuid.UUID("6f1c2a0e-9b3d-4c5e-8f70-1a2b3c4d5e6f")

# RFC 4231 test cases 1, 2, 3, 6 and 7 (HMAC-SHA256)
RFC_4231 = [
    (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    (
        b"\xaa" * 20,
        b"\xdd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
    ),
    (
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    (
        b"\xaa" * 131,
        b"This is a test using a larger than block-size key and a larger than block-size data."
        b" The key needs to be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
]


@pytest.mark.parametrize(("key", "message", "expected"), RFC_4231)
def test_signature_is_hmac_sha256_per_rfc_4231(key: bytes, message: bytes, expected: str) -> None:
    assert signature(key, message) == expected


def test_token_has_the_shape_app_login_parses() -> None:
    expires = datetime(2030, 1, 2, 3, 4, 5, 999_000, tzinfo=UTC)
    token = mint_token(KEY, USER, expires_at=expires)
    match = SQL_TOKEN_PATTERN.match(token)
    assert match is not None, token
    key_id, user, expiry, sig = match.groups()
    assert (int(key_id), uuid.UUID(user), int(expiry)) == (7, USER, 1893553445)  # floored
    assert sig == signature(KEY.secret, token.rpartition(".")[0].encode())


def test_expiry_in_another_timezone_is_the_same_instant() -> None:
    utc = datetime(2030, 1, 1, 12, tzinfo=UTC)
    elsewhere = utc.astimezone(datetime.now().astimezone().tzinfo)
    assert mint_token(KEY, USER, expires_at=utc) == mint_token(KEY, USER, expires_at=elsewhere)


def test_every_input_changes_the_signature() -> None:
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    base = mint_token(KEY, USER, expires_at=expires)
    others = [
        mint_token(SigningKey(8, KEY.secret), USER, expires_at=expires),
        mint_token(SigningKey(7, bytes(64)), USER, expires_at=expires),
        mint_token(KEY, uuid.uuid4(), expires_at=expires),
        mint_token(KEY, USER, expires_at=expires + timedelta(seconds=1)),
    ]
    signatures = {token.rpartition(".")[2] for token in [base, *others]}
    assert len(signatures) == 5


@pytest.mark.parametrize(
    ("key_id", "secret"),
    [(0, bytes(32)), (1_000_000_000, bytes(32)), (1, bytes(31)), (-1, bytes(64))],
)
def test_bad_keys_are_refused(key_id: int, secret: bytes) -> None:
    with pytest.raises(InvalidIdentityToken):
        SigningKey(key_id, secret)


def test_naive_or_out_of_range_expiry_is_refused() -> None:
    with pytest.raises(InvalidIdentityToken, match="timezone-aware"):
        mint_token(KEY, USER, expires_at=datetime(2030, 1, 1))
    with pytest.raises(InvalidIdentityToken, match="out of range"):
        mint_token(KEY, USER, expires_at=datetime(1960, 1, 1, tzinfo=UTC))


def test_secret_is_not_in_the_repr() -> None:
    assert KEY.secret.hex() not in repr(KEY)
    assert "secret" not in repr(KEY)
