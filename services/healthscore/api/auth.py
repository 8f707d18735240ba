"""Who is calling: bearer JWTs verified against a shared secret (HS256) or an
identity provider's public keys (RS256, a JWKS file).

Only verification happens here. What the verified person may see is decided
by row-level security in PostgreSQL, bound to `sub` for each request
(`healthscore.api.session`).

A dashboard sends the same token with every request until it expires, and
verifying it (base64, JSON, the signature, the claims) is a noticeable part of
a request's cost, so each verifier remembers the tokens it verified: by the
whole token string (its signature included, so a forged or altered token is
never the key of a remembered one), until the token's `exp` (past it, the token is
verified again and refused: `exp` has no leeway, `nbf` and `iat` have LEEWAY), at most
TOKEN_CACHE_SIZE of them, the least recently used leaving first. Nothing is
remembered about a token that failed.

An identity provider rotates its keys (on a schedule, or withdrawing a compromised
one), and the operator's JWKS file (API_JWKS_PATH, a mounted secret) follows: the file
is looked at again at most every JWKS_RECHECK_SECONDS and read again when it changed,
and the tokens remembered as verified are then forgotten (one signed with a withdrawn
key is verified again, and refused). A file that cannot be read or parsed keeps the
keys last read, logged (`api_jwks_unreadable`).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import jwt
import structlog

from healthscore.errors import HealthscoreError

log = structlog.get_logger(__name__)

# clock skew between the IdP and this host, for `nbf` and `iat`; none for `exp`: the
# database token minted for a request lives no longer than the caller's token, so a
# token within a leeway past its exp was refused by the database after all
LEEWAY: Final = timedelta(seconds=30)
TOKEN_CACHE_SIZE: Final = 4096  # verified tokens remembered (a few MB at most)
MAX_CACHED_TOKEN_LENGTH: Final = 8192  # longer tokens are verified every time
MAX_QUOTED_ALGORITHM: Final = 40  # characters of a refused `alg` a 401 quotes
JWKS_RECHECK_SECONDS: Final = 1.0  # how often the JWKS file is looked at for a change


class Unauthenticated(HealthscoreError):
    """No usable credential: the request gets 401 with `reason` as its detail."""

    def __init__(self, reason: str, code: str = "invalid_token") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class Principal:
    """A verified caller: a user_profiles id and when the credential expires."""

    user_id: uuid.UUID
    expires_at: datetime


class VerifiedTokens:
    """Principals of verified tokens, by token string, each until its expiry (bounded LRU)."""

    def __init__(self, size: int = TOKEN_CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[str, Principal] = OrderedDict()
        self._lock = threading.Lock()  # the API serves from one thread; tests may not

    def get(self, token: str, now: float) -> Principal | None:
        with self._lock:
            principal = self._entries.get(token)
            if principal is None:
                return None
            if principal.expires_at.timestamp() <= now:
                del self._entries[token]
                return None
            self._entries.move_to_end(token)
            return principal

    def put(self, token: str, principal: Principal, now: float) -> None:
        if principal.expires_at.timestamp() <= now or len(token) > MAX_CACHED_TOKEN_LENGTH:
            return
        with self._lock:
            self._entries[token] = principal
            self._entries.move_to_end(token)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class JwksFile:
    """The identity provider's key set as its file holds it now: read again when the
    file changed (its inode, size or modification time), looked at no more often than
    every JWKS_RECHECK_SECONDS."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = self._stamp_now()
        self.keys = jwt.PyJWKSet.from_json(path.read_text())  # unreadable at start: refused
        self._next_check = time.monotonic() + JWKS_RECHECK_SECONDS
        self._lock = threading.Lock()

    def _stamp_now(self) -> tuple[int, int, int] | None:
        try:
            found = self.path.stat()
        except OSError:
            return None
        return found.st_ino, found.st_size, found.st_mtime_ns

    def refresh(self, now: float) -> bool:
        """Read the file again if it changed since it was read; whether the keys did."""
        with self._lock:
            if now < self._next_check:
                return False
            self._next_check = now + JWKS_RECHECK_SECONDS
            stamp = self._stamp_now()
            if stamp is None or stamp == self._stamp:
                return False
            self._stamp = stamp  # a file that fails is logged once, not every look
            try:
                keys = jwt.PyJWKSet.from_json(self.path.read_text())
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                # half-written, or replaced by something else: the keys last read stay
                log.error("api_jwks_unreadable", path=str(self.path), error=str(exc)[:200])
                return False
            self.keys = keys
            log.info("api_jwks_reloaded", path=str(self.path), keys=len(keys.keys))
            return True


# the claims that are times (RFC 7519, 4.1.4-4.1.6)
NUMERIC_DATES = ("exp", "nbf", "iat")


@dataclass(frozen=True)
class TokenVerifier:
    """Verifies bearer tokens. Each algorithm is accepted only when its key is configured."""

    hs256_secret: bytes | None = field(default=None, repr=False)
    jwks: jwt.PyJWKSet | None = None
    audience: str | None = None
    issuer: str | None = None
    verified: VerifiedTokens = field(
        default_factory=VerifiedTokens, repr=False, compare=False, hash=False
    )
    # the key set's file, followed as the identity provider rotates its keys (from_files)
    jwks_file: JwksFile | None = field(default=None, repr=False, compare=False, hash=False)

    @classmethod
    def from_files(
        cls,
        hs256_secret: str | None,
        jwks_path: Path | None,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> TokenVerifier:
        jwks_file = JwksFile(jwks_path) if jwks_path is not None else None
        secret = hs256_secret.encode() if hs256_secret else None
        jwks = jwks_file.keys if jwks_file is not None else None
        return cls(secret, jwks, audience, issuer, jwks_file=jwks_file)

    @property
    def configured(self) -> bool:
        return self.hs256_secret is not None or self.jwks is not None

    def verify(self, authorization: str | None) -> Principal:
        token = _bearer(authorization)
        now = time.time()
        if self.jwks_file is not None and self.jwks_file.refresh(time.monotonic()):
            # a token remembered may be signed with a key the provider withdrew
            self.verified.clear()
        principal = self.verified.get(token, now)
        if principal is None:
            principal = self._verify(token)
            self.verified.put(token, principal, now)
        return principal

    def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("the bearer token is not a JWT") from None
        key: Any
        algorithm = header.get("alg")
        if algorithm == "HS256" and self.hs256_secret is not None:
            key = self.hs256_secret
        elif algorithm == "RS256" and self._key_set() is not None:
            key = self._public_key(header.get("kid"))
        else:
            # the header is the client's: its `alg` may be any length (the problem, the
            # challenge and the access log quote it)
            shown = repr(algorithm)
            if len(shown) > MAX_QUOTED_ALGORITHM:
                shown = shown[:MAX_QUOTED_ALGORITHM] + "..."
            raise Unauthenticated(f"tokens signed with {shown} are not accepted here")
        options = {"require": ["exp", "sub"], "verify_aud": self.audience is not None}
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                options=options,  # type: ignore[arg-type]
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"the token is not valid: {exc}") from None
        for name in NUMERIC_DATES:
            # RFC 7519's NumericDate is a JSON number; PyJWT takes a numeric string too
            value = claims.get(name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if value is not None and not number:
                raise Unauthenticated(f"the token's {name!r} is not a number (seconds since 1970)")
        try:
            user_id = uuid.UUID(str(claims["sub"]))
        except ValueError:
            raise Unauthenticated("the token's subject is not a user id") from None
        try:
            expires_at = datetime.fromtimestamp(int(claims["exp"]), UTC)
        except (OverflowError, ValueError, OSError):
            # PyJWT takes any number; a datetime ends with year 9999 (an identity
            # provider writing milliseconds gives year 58,000): a 500 otherwise
            raise Unauthenticated(
                "the token's 'exp' is past year 9999 (seconds since 1970, not milliseconds)"
            ) from None
        if expires_at.timestamp() <= time.time():  # PyJWT's leeway applied to exp too
            raise Unauthenticated("the token has expired")
        return Principal(user_id, expires_at)

    def _key_set(self) -> jwt.PyJWKSet | None:
        return self.jwks_file.keys if self.jwks_file is not None else self.jwks

    def _public_key(self, kid: Any) -> Any:
        key_set = self._key_set()
        assert key_set is not None
        # the set's RS256 keys only: it may hold EC or symmetric keys too (public, so
        # anybody can name one), which PyJWT's RS256 fails on with a TypeError (a 500)
        keys = [
            k
            for k in key_set.keys
            if k.algorithm_name == "RS256" and (kid is None or k.key_id == kid)
        ]
        if len(keys) != 1:
            raise Unauthenticated("the token's signing key is not in the configured key set")
        return keys[0].key


def one_authorization(values: Sequence[str]) -> str | None:
    """The request's one Authorization header (None: none sent).

    Several are refused: which of them the request is answered as would depend on
    who reads them (Starlette's `headers.get` takes the first), and the response
    cache must key an answer by the very credential the route computed it under.
    """
    if len(values) > 1:
        raise Unauthenticated("send one Authorization header, not several", "invalid_request")
    return values[0] if values else None


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("an Authorization: Bearer token is required", code="invalid_request")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "the Authorization header must be 'Bearer <token>'", "invalid_request"
        )
    return token.strip()


def issue_hs256(
    secret: str,
    user_id: uuid.UUID,
    valid_for: timedelta,
    *,
    audience: str | None = None,
    issuer: str | None = None,
    now: datetime | None = None,
) -> str:
    """An HS256 token for `user_id` (development sign-in links, tests, the benchmark)."""
    issued = now or datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "iat": int(issued.timestamp()),
        "exp": int((issued + valid_for).timestamp()),
    }
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


def jwks_document(public_jwks: list[dict[str, Any]]) -> str:
    """A JWKS file's text (what API_JWKS_PATH points at)."""
    return json.dumps({"keys": public_jwks})
