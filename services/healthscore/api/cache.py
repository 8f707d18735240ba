"""Answers kept per verified user, request and read-model version.

A dashboard's clients ask the same few pages again and again, and between two
writes the answer that row-level security decided for a user does not change.
So a GET answer is kept, keyed by the verified caller's user id and the request
(path and query), with the version of every table its endpoint reads
(ENDPOINTS). The database announces each committed change of those tables
(migrations 0050 and 0051, heard by healthscore.api.invalidation), which bumps
that table's version here; an answer is served only while the versions it was
computed at are still the current ones. A hit costs the token check and a
dictionary lookup: no connection, no login, no statement.

A list narrowed by an id prefix (`q`) reads only the organizations whose ids start
with it, so it is kept at the changes of the ids sharing its first PREFIX_DIGITS
digits (or all of them, when shorter), counted per prefix from the same
announcements, instead of every change of those tables.

An organization's pages (its page, history, milestones) read only that
organization's rows of the tables announced by organization
(`read_model_changes.NAMES_ORGANIZATIONS`), so they are kept at the version of that
organization instead of those tables': a write to one organization leaves every
other organization's pages as they were. An organization's version is a counter
of its bucket (organizations hash into ORGANIZATION_BUCKETS of them: two sharing
one only drop each other's pages more often); an announcement of a whole table
moves every organization on.

Answers are kept per *audience* where the database says a group of users sees the
same rows: `app_audience()` (migration 0061) names it ('admin': every dashboard policy
admits an admin by the role alone), so a team of admins looking at the same at-risk
organizations shares one computation per page. Each user's audience is asked once
(one statement, as that user) and kept while user_profiles is unchanged; anybody the
database names no audience for keeps answers of their own, as do the endpoints whose
answer names its caller (`Endpoint.per_user`: /me, the interactions with
`assigned_to=me`).

Correctness first:

* only after the bearer token is verified (an unverified caller, or one sending
  several Authorization headers, goes through to the route, which answers 401: the
  answer is keyed by the credential it was computed under), and only while the
  token is still valid (the
  database would refuse an expired one: such a request goes through too);
* the user, or the audience the database put them in, is part of the key, so an
  answer computed under one user's row-level security reaches only users the
  database declares to see the same rows;
* user_profiles (roles) and app_signing_keys (retirement) are read by every
  endpoint: a role change or a key's retirement drops every answer; a retirement
  dated in the future stops the cache at that time (`CacheState.key_retires_at`);
* nothing is served or kept while the listener is not known to be live (lost,
  reconnecting, or silent for longer than its lease): a change could have gone
  unheard; every version moves on when it is lost and when it is back;
* an answer is kept only when no version it read moved while it was computed,
  under the versions read before its transaction began (so its snapshot holds at
  least every change announced before them);
* answers that depend on the clock (overdue follow-ups) are kept CLOCK_MAX_AGE
  at most, or until the time the route tells (`changes_by_clock_in`: the
  organization page, until its next open follow-up falls due);
* only 200 answers to GET; a write through the API (POST and the like: the
  milestone acknowledgment and reward) moves every version on once it has
  committed, so the caller sees their own write at once.

Concurrent misses of the same key at the same versions share one computation
(the first computes, the others wait for its answer): when a write moves a
version, fifty clients asking for the same page cost one query, not fifty.

Memory is bounded: at most `max_entries` answers and `max_bytes` of them with their
keys (a key's query string may be as long as the answer), the least recently used
leaving first. One user's own answers (not an audience's) hold
at most 1/USER_SHARE of either, past which they replace that user's least recently
used: every distinct query string is a key (a parameter the route ignores, a cursor
the client wrote), and one member, who sees nothing, could otherwise push every
other user's answers out with empty ones. All users' own answers together hold at
most 1/USERS_SHARE, past which the user holding the most gives one up: so a
coalition of logins (eight at an eighth each emptied the cache) never pushes out an
audience's answers, and a user's few answers stay until every one of as many
users as fill that part holds as few.

Responses carry an ETag (a digest of the body) and `Cache-Control: private,
no-store`: no browser keeps them on disk, and a client that sends If-None-Match
itself gets 304 when its copy is still the answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
import uuid
from array import array
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, get_args
from urllib.parse import parse_qsl

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from healthscore.api.auth import Principal, TokenVerifier, Unauthenticated, one_authorization
from healthscore.api.metrics import ApiMetrics
from healthscore.store import read_model_changes as t

log = structlog.get_logger(__name__)

# answers whose values depend on now() (overdue follow-ups) are this old at most
CLOCK_MAX_AGE: Final = 1.0
# the signing key's retirement is the database's clock; allow for skew
KEY_RETIREMENT_MARGIN: Final = 30.0
DEFAULT_MAX_ENTRIES: Final = 4096
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
# a user's own answers (keyed by their id, not an audience) hold at most this part of
# the entries and of the bytes; one answer may be as large (ResponseCache.put)
USER_SHARE: Final = 8
# the users' own answers together hold at most this part of the entries and of the
# bytes: the rest is the audiences' (ResponseCache)
USERS_SHARE: Final = 2

# users whose audience is remembered (all forgotten beyond it, and asked again)
MAX_AUDIENCE_USERS: Final = 100_000
# a power of two; 8 bytes each
ORGANIZATION_BUCKETS: Final = 1 << 18
# changes are also counted per id prefix of 1 to this many hex digits (16 ** n counters
# of 8 bytes each), for the lists of an id-prefix search
PREFIX_DIGITS: Final = 4
# what the list's `q` may be (the route refuses anything else): hex digits and dashes
_ID_PREFIX: Final = re.compile(r"[0-9a-fA-F-]{1,36}")
CLOCK_SCOPE_KEY: Final = "healthscore.changes_by_clock_in"
# a lagging list is computed again this long before its bound (or from half of it)
LIST_REFRESH_LEAD: Final = 1.0

# (the user, or the audience the database puts them in; the path and query)
Key = tuple[uuid.UUID | str, bytes]
Versions = tuple[int, ...]
# why a request found no answer to serve: none kept (never asked here, evicted, or
# dropped), a version it read has moved, or its time (clock-bound answers) is up
MissReason = Literal["absent", "changed", "expired"]
# why a computed answer was not kept: a version it read moved while it was computed, the
# listener was not live when it was done, or a clock-bound answer was already at its time
UnkeptReason = Literal["moved", "not_serving", "clock"]

# what decides who may see what: every endpoint reads it
_IDENTITY: Final = (t.USERS, t.SIGNING_KEYS)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The tables a GET endpoint's statements and policies read."""

    tables: tuple[str, ...]
    clock_bound: bool = False
    # the path names an organization (group `organization`) and the endpoint reads
    # only its rows of the tables announced by organization
    by_organization: bool = False
    # a `q` (an organization id prefix) narrows what it reads to the ids with that
    # prefix, of the tables announced by organization
    by_id_prefix: bool = False
    # the answer names its caller (who they are, what is assigned to them): kept for
    # that user only, never for their audience
    per_user: bool = False
    # a list over many organizations: its kept answer may be served up to the
    # cache's `list_staleness` after a change of the read model it does not show yet,
    # while it is computed again (see "Lists within a bound")
    may_lag: bool = False


_ID = r"(?P<organization>[^/]+)"
ENDPOINTS: Final = (
    (
        re.compile(r"/api/v1/organizations"),
        Endpoint((t.CUSTOMER_HEALTH, t.ORGANIZATIONS, *_IDENTITY), by_id_prefix=True, may_lag=True),
    ),
    (
        re.compile(rf"/api/v1/organizations/{_ID}"),
        Endpoint(
            (
                t.CUSTOMER_HEALTH,
                t.ORGANIZATIONS,
                t.MILESTONES,
                t.INTERACTIONS,
                t.ALERTS,
                *_IDENTITY,
            ),
            clock_bound=True,
            by_organization=True,
        ),
    ),
    (
        re.compile(rf"/api/v1/organizations/{_ID}/history"),
        Endpoint(
            (t.CUSTOMER_HEALTH, t.ORGANIZATIONS, t.SCORE_HISTORY, *_IDENTITY),
            by_organization=True,
        ),
    ),
    (
        re.compile(rf"/api/v1/organizations/{_ID}/milestones"),
        Endpoint(
            (t.CUSTOMER_HEALTH, t.ORGANIZATIONS, t.MILESTONES, *_IDENTITY),
            by_organization=True,
        ),
    ),
    (
        re.compile(r"/api/v1/interactions"),
        Endpoint((t.INTERACTIONS, t.ORGANIZATIONS, *_IDENTITY), clock_bound=True, per_user=True),
    ),
    (re.compile(r"/api/v1/me"), Endpoint(_IDENTITY, per_user=True)),
    (re.compile(r"/api/v1/score-quality"), Endpoint((t.SCORE_QUALITY, *_IDENTITY))),
)


def endpoint_of(path: str) -> Endpoint | None:
    """The cached endpoint serving `path`; None: not cached."""
    return endpoint_and_organization(path)[0]


def endpoint_and_organization(path: str) -> tuple[Endpoint | None, str | None]:
    """The cached endpoint serving `path` and the organization it names, as
    PostgreSQL prints the id (None: it names none, or not a valid id)."""
    for pattern, endpoint in ENDPOINTS:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        if not endpoint.by_organization:
            return endpoint, None
        try:
            return endpoint, str(uuid.UUID(match["organization"]))
        except ValueError:  # the route answers 422; nothing is kept
            return endpoint, None
    return None, None


def id_prefix(query_string: bytes) -> str | None:
    """The hex digits of the query's one `q`, lowercase, as the route reads them; None:
    no q, several, or one the route refuses."""
    values = [v for k, v in parse_qsl(query_string.decode("latin-1"), True) if k == "q"]
    if len(values) != 1 or not _ID_PREFIX.fullmatch(values[0]):
        return None
    digits = values[0].replace("-", "").lower()
    return digits if 0 < len(digits) <= 32 else None


class ReadModelVersions:
    """Each announced table's version (how many of its changes this process has heard
    of), and each organization's, for the tables announced by organization."""

    def __init__(self) -> None:
        # every change of the table
        self._versions = dict.fromkeys(t.TABLES, 0)
        # changes of the whole table: those not narrowed to some organizations
        self._whole = dict.fromkeys(t.TABLES, 0)
        self._organizations = array("Q", bytes(8 * ORGANIZATION_BUCKETS))
        # [n - 1][the first n hex digits of an id]: changes of such ids
        self._prefixes = [array("Q", bytes(8 * 16**n)) for n in range(1, PREFIX_DIGITS + 1)]

    def changed(self, table: str, organizations: Iterable[str] = ()) -> None:
        """`table` changed: only the rows of `organizations` (as PostgreSQL prints their
        ids) when it is announced by organization and they are given, else all of it."""
        if table not in self._versions:  # a payload we do not know: assume anything changed
            self.changed_everything()
            return
        self._versions[table] += 1
        if table not in t.NAMES_ORGANIZATIONS:
            self._whole[table] += 1
            return
        buckets, prefixes = self._organizations, self._prefixes
        moved = False
        for organization in organizations:
            buckets[hash(organization) & (ORGANIZATION_BUCKETS - 1)] += 1
            try:
                head = int(organization[:PREFIX_DIGITS], 16)
            except ValueError:  # not an id as PostgreSQL prints them: every prefix moves
                self._whole[table] += 1
                return
            for n, counters in enumerate(prefixes, 1):
                counters[head >> 4 * (PREFIX_DIGITS - n)] += 1
            moved = True
        if not moved:
            self._whole[table] += 1

    def changed_everything(self) -> None:
        for table in self._versions:
            self._versions[table] += 1
            self._whole[table] += 1

    def of(self, tables: Iterable[str]) -> Versions:
        versions = self._versions
        return tuple([versions[table] for table in tables])

    def of_organization(self, tables: Iterable[str], organization: str) -> Versions:
        """The versions an organization's page read at: its own, with the whole-table
        versions of the tables announced by organization and the others' versions."""
        own = self._organizations[hash(organization) & (ORGANIZATION_BUCKETS - 1)]
        return (*self._narrowed(tables), own)

    def of_id_prefix(self, tables: Iterable[str], digits: str) -> Versions:
        """The versions a list of the ids starting with `digits` (lowercase hex) read at:
        the changes of the ids sharing their first PREFIX_DIGITS digits or fewer, with
        the whole-table versions of the tables announced by organization and the
        others' versions."""
        n = min(len(digits), PREFIX_DIGITS)
        return (*self._narrowed(tables), self._prefixes[n - 1][int(digits[:n], 16)])

    def _narrowed(self, tables: Iterable[str]) -> list[int]:
        versions, whole = self._versions, self._whole
        return [
            whole[table] if table in t.NAMES_ORGANIZATIONS else versions[table] for table in tables
        ]


@dataclass(frozen=True, slots=True)
class Answer:
    """A kept 200 response: its headers (with the ETag), body and validator."""

    headers: list[tuple[bytes, bytes]]
    body: bytes
    etag: bytes

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + 200

    def not_modified_headers(self) -> list[tuple[bytes, bytes]]:
        return [(k, v) for k, v in self.headers if k in (b"etag", b"cache-control", b"vary")]


@dataclass(slots=True)
class _Entry:
    versions: Versions
    fresh_until: float  # time.monotonic()
    answer: Answer
    # time.monotonic() before its transaction began: it shows every change announced
    # before then
    computed_at: float
    # what it holds: the answer and its key (a query string of up to 64 KiB, parameters
    # the route ignores included, which any client may vary)
    size: int


@dataclass(frozen=True, slots=True)
class Lagging:
    """A kept answer computed before a change it does not show, still within its bound."""

    answer: Answer
    computed_at: float


@dataclass(slots=True)
class _Holding:
    """One user's own answers, least recently used first, and their bytes."""

    keys: OrderedDict[Key, None] = field(default_factory=OrderedDict)
    bytes: int = 0


class ResponseCache:
    """Answers by key, each valid at its versions; a bounded LRU, fair between users.

    The users' own answers (keyed by a user id, not an audience) hold at most
    1/USERS_SHARE of the entries and of the bytes together, and one user's at most
    1/USER_SHARE; past either, the user holding the most gives up their least recently
    used. So no number of logins asking distinct queries pushes out an audience's
    answers, and a user with a few answers keeps them until every one of as many
    others as fill the users' part holds as few (eight users at an eighth each once
    emptied the whole cache, for everybody)."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_evict: Callable[[], None] | None = None,
    ):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._on_evict = on_evict
        self.bytes = 0
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        # answers kept per user (answers kept for an audience are not counted), and
        # the users' together
        self._by_user: dict[uuid.UUID, _Holding] = {}
        self._users_entries = 0
        self._users_bytes = 0

    def get(self, key: Key, versions: Versions, now: float) -> Answer | None:
        found = self.lookup(key, versions, now)
        return found if isinstance(found, Answer) else None

    def lookup(
        self, key: Key, versions: Versions, now: float, may_lag: float = 0.0
    ) -> Answer | Lagging | MissReason:
        """The kept answer at `versions`; or, computed less than `may_lag` seconds ago,
        the kept answer at older versions (Lagging); or why there is none to serve."""
        entry = self._entries.get(key)
        if entry is None:
            return "absent"
        if entry.fresh_until <= now:
            self._drop(key, entry)
            return "expired"
        if entry.versions != versions:
            if now < entry.computed_at + may_lag:
                self._used(key)
                return Lagging(entry.answer, entry.computed_at)
            self._drop(key, entry)
            return "changed"
        self._used(key)
        return entry.answer

    def put(
        self,
        key: Key,
        versions: Versions,
        fresh_until: float,
        answer: Answer,
        computed_at: float = -math.inf,
    ) -> None:
        size = answer.size + len(key[1])
        if size > self.max_bytes // USER_SHARE:  # one huge answer would push out many
            return
        old = self._entries.get(key)
        if old is not None:
            self._drop(key, old)
        user = key[0]
        if isinstance(user, uuid.UUID):
            self._make_room_for(user, size)
            held = self._by_user.setdefault(user, _Holding())
            held.keys[key] = None
            held.bytes += size
            self._users_entries += 1
            self._users_bytes += size
        self._entries[key] = _Entry(versions, fresh_until, answer, computed_at, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            if self._users_over(0, 0):
                self._evict_from(self._largest_holder())
            else:
                evicted_key, evicted = next(iter(self._entries.items()))
                self._evict(evicted_key, evicted)

    def _make_room_for(self, user: uuid.UUID, size: int) -> None:
        """Drop the user's least recently used answers until one more of `size` bytes
        fits in their share, then the largest holder's until it fits in the users'
        part (an audience's answers have neither bound but the cache's)."""
        entries = max(1, self.max_entries // USER_SHARE)
        most_bytes = self.max_bytes // USER_SHARE
        held = self._by_user.get(user)
        while held is not None and (len(held.keys) >= entries or held.bytes + size > most_bytes):
            self._evict_from(user)
            held = self._by_user.get(user)
        while self._users_over(1, size):
            self._evict_from(self._largest_holder())

    def _users_over(self, entries: int, size: int) -> bool:
        """Whether the users' answers, with `entries` more of `size` bytes, would hold
        more than their part (always less than the whole, so one user may keep one)."""
        if not self._by_user:
            return False
        most_entries = max(1, self.max_entries // USERS_SHARE)
        most_bytes = self.max_bytes // USERS_SHARE
        return self._users_entries + entries > most_entries or self._users_bytes + size > most_bytes

    def _largest_holder(self) -> uuid.UUID:
        return max(self._by_user.items(), key=lambda item: (len(item[1].keys), item[1].bytes))[0]

    def _evict_from(self, user: uuid.UUID) -> None:
        key = next(iter(self._by_user[user].keys))
        self._evict(key, self._entries[key])

    def _evict(self, key: Key, entry: _Entry) -> None:
        self._drop(key, entry)
        if self._on_evict is not None:
            self._on_evict()

    def _used(self, key: Key) -> None:
        self._entries.move_to_end(key)
        user = key[0]
        if isinstance(user, uuid.UUID):
            self._by_user[user].keys.move_to_end(key)

    def clear(self) -> None:
        self._entries.clear()
        self._by_user.clear()
        self._users_entries = self._users_bytes = 0
        self.bytes = 0

    def _drop(self, key: Key, entry: _Entry) -> None:
        del self._entries[key]
        size = entry.size
        self.bytes -= size
        user = key[0]
        if isinstance(user, uuid.UUID):
            held = self._by_user[user]
            del held.keys[key]
            held.bytes -= size
            self._users_entries -= 1
            self._users_bytes -= size
            if not held.keys:
                del self._by_user[user]

    def __len__(self) -> int:
        return len(self._entries)


AudienceOf = Callable[[Principal], Awaitable[str | None]]
_USERS: Final = (t.USERS,)


@dataclass
class CacheState:
    """The cache, the versions, and whether the listener lets the cache serve."""

    cache: ResponseCache
    metrics: ApiMetrics
    versions: ReadModelVersions = field(default_factory=ReadModelVersions)
    # time.monotonic() until which the listener is known to be live (its last round
    # trip plus its lease); -inf: not connected
    live_until: float = -math.inf
    # unix time from which the database refuses the API's signing key
    key_retires_at: float = math.inf
    flights: dict[tuple[Key, Versions], asyncio.Future[Answer | None]] = field(default_factory=dict)
    # how long after it was computed a list's answer (Endpoint.may_lag) may still be
    # served once the read model has changed under it; 0: lists are exact too
    list_staleness: float = 0.0
    # lists being computed again in the background while their lagging answer is
    # served, by key (one at a time per key)
    refreshing: set[Key] = field(default_factory=set)
    # asks the database for a user's audience (app_audience); None: answers per user
    audience_of: AudienceOf | None = None
    # user -> (user_profiles' version when asked, their audience)
    audiences: dict[uuid.UUID, tuple[Versions, str | None]] = field(default_factory=dict)

    async def owner(self, principal: Principal, endpoint: Endpoint) -> uuid.UUID | str:
        """Whose answer this request gets: its audience's, or the caller's own."""
        user = principal.user_id
        if endpoint.per_user or self.audience_of is None:
            return user
        asked_at = self.versions.of(_USERS)
        known = self.audiences.get(user)
        if known is not None and known[0] == asked_at:
            audience = known[1]
        else:
            try:
                audience = await self.audience_of(principal)
            except Unauthenticated:  # an unknown subject: the route answers it 401
                return user
            except Exception as exc:  # the route meets the same failure and answers it
                log.warning("api_audience_unknown", error=str(exc))
                return user
            if self.versions.of(_USERS) == asked_at:  # else the answer may predate a change
                if len(self.audiences) >= MAX_AUDIENCE_USERS:
                    self.audiences.clear()
                self.audiences[user] = (asked_at, audience)
            self.metrics.cache_audience_lookups.inc()
        return user if audience is None else "audience:" + audience

    def serving(self, wall: float, monotonic: float) -> bool:
        return monotonic < self.live_until and wall < self.key_retires_at - KEY_RETIREMENT_MARGIN

    def changed(self, table: str, organizations: Iterable[str] = ()) -> None:
        self.versions.changed(table, organizations)
        self.metrics.cache_invalidations.labels(table=table).inc()
        if table not in t.READ_MODEL:
            # who may see what, or a table we do not know: nothing kept is served, not
            # even a list within its bound
            self.cache.clear()

    def changed_everything(self) -> None:
        """Every version moves on, and nothing kept is served again (lagging lists
        included): after a write through the API, a reconnection, an unknown payload."""
        self.versions.changed_everything()
        self.cache.clear()

    def live(self, until: float) -> None:
        self.live_until = until

    def blind(self) -> None:
        """The listener is lost: serve nothing, keep nothing, forget everything."""
        self.live_until = -math.inf
        self.versions.changed_everything()
        self.cache.clear()
        self.audiences.clear()


@dataclass(slots=True)
class _ClockHint:
    seconds: float | None = None


def refresh_after(list_staleness: float) -> float:
    """The age from which a lagging list is computed again in the background: early
    enough to be done before its bound, late enough to be computed as seldom as it may."""
    return max(list_staleness / 2, list_staleness - LIST_REFRESH_LEAD)


def changes_by_clock_in(scope: Scope, seconds: float) -> None:
    """Tell the cache, from a clock-bound route, that its answer stays what it is for
    `seconds` (measured from the start of its transaction; math.inf: until a write
    changes it). Without it such an answer is kept CLOCK_MAX_AGE."""
    hint = scope.get(CLOCK_SCOPE_KEY)
    if isinstance(hint, _ClockHint):
        hint.seconds = max(0.0, seconds)


def _etag(body: bytes) -> bytes:
    return b'"' + hashlib.blake2b(body, digest_size=12).hexdigest().encode() + b'"'


def _matches(if_none_match: bytes | None, etag: bytes) -> bool:
    if if_none_match is None:
        return False
    candidates = [c.strip() for c in if_none_match.split(b",")]
    return b"*" in candidates or etag in candidates or b"W/" + etag in candidates


_WRITES: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# no-store like every other answer (one naming people must not stay on a shared desk's
# disk, and whether an answer was kept must not decide that); the ETag still answers 304
# to a client that sends If-None-Match itself
_CACHE_HEADERS: Final = [
    (b"cache-control", b"private, no-store"),
    (b"vary", b"authorization"),
]


def _answer(messages: list[Message]) -> Answer | None:
    """The captured response as an Answer, when it is a complete 200."""
    if not messages or messages[0]["type"] != "http.response.start":
        return None
    start = messages[0]
    if start["status"] != 200:
        return None
    body = b"".join(m.get("body", b"") for m in messages[1:] if m["type"] == "http.response.body")
    etag = _etag(body)
    headers = [
        (k, v) for k, v in start.get("headers", []) if k.lower() not in (b"etag", b"cache-control")
    ]
    return Answer([*headers, (b"etag", etag), *_CACHE_HEADERS], body, etag)


class CachedReads:
    """ASGI middleware in front of the API's routes: serves and keeps GET answers
    (`clock`: the monotonic clock they are kept by; a test passes a fake)."""

    def __init__(
        self,
        app: ASGIApp,
        state: CacheState,
        verifier: TokenVerifier,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.state = state
        self.verifier = verifier
        self._clock = clock
        m = state.metrics.cache_requests
        self._hit = m.labels(outcome="hit")
        self._shared = m.labels(outcome="shared")
        self._miss = m.labels(outcome="miss")
        self._lagging = m.labels(outcome="lagging")
        self._refreshes = state.metrics.cache_refreshes
        self._background: set[asyncio.Task[None]] = set()
        self._miss_reason = {
            reason: state.metrics.cache_misses.labels(reason=reason)
            for reason in get_args(MissReason)
        }
        self._bypass = m.labels(outcome="bypass")
        self._not_modified = state.metrics.cache_not_modified
        self._unkept = {
            reason: state.metrics.cache_unkept.labels(reason=reason)
            for reason in get_args(UnkeptReason)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if method != "GET":
            if method in _WRITES and path.startswith("/api/v1/"):
                await self._write(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        endpoint, organization = endpoint_and_organization(path)
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        authorizations: list[str] = []
        if_none_match = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorizations.append(value.decode("latin-1"))
            elif name == b"if-none-match":
                if_none_match = value
        try:
            # the credential the route verifies (several: refused there, never kept)
            principal = self.verifier.verify(one_authorization(authorizations))
        except Unauthenticated:
            await self.app(scope, receive, send)  # the route answers 401
            return
        state = self.state
        wall, monotonic = time.time(), self._clock()
        if principal.expires_at.timestamp() <= wall or not state.serving(wall, monotonic):
            self._bypass.inc()
            await self.app(scope, receive, send)
            return

        # who may see what, as of before the owner is decided (see _compute)
        users_at = state.versions.of(_USERS)
        owner = await state.owner(principal, endpoint)
        query: bytes = scope["query_string"]
        key: Key = (owner, path.encode() + b"?" + query)
        prefix = id_prefix(query) if endpoint.by_id_prefix and query else None
        versions = self._versions(endpoint, organization, prefix)
        found = state.cache.lookup(
            key, versions, monotonic, state.list_staleness if endpoint.may_lag else 0.0
        )
        if isinstance(found, Answer):
            self._hit.inc()
            await self._send(send, found, if_none_match)
            return
        if isinstance(found, Lagging):
            self._lagging.inc()
            # computed again in the background a little before its bound, so that a list
            # asked steadily is served from the cache and never more than the bound late
            if (
                monotonic >= found.computed_at + refresh_after(state.list_staleness)
                and key not in state.refreshing
                and (key, versions) not in state.flights
            ):
                self._refresh_in_background(
                    scope, endpoint, organization, prefix, key, versions, users_at
                )
            await self._send(send, found.answer, if_none_match)
            return
        flight = state.flights.get((key, versions))
        if flight is not None:
            answer = await asyncio.shield(flight)
            if answer is not None:
                self._shared.inc()
                await self._send(send, answer, if_none_match)
                return
            self._miss.inc()
            self._miss_reason[found].inc()
            await self.app(scope, receive, send)
            return

        self._miss.inc()
        self._miss_reason[found].inc()
        messages: list[Message] = []
        try:
            answer = await self._compute(
                scope,
                receive,
                endpoint,
                organization,
                prefix,
                key,
                versions,
                users_at,
                monotonic,
                messages,
            )
        except Exception:
            # the framework answered (its 500 problem) before it raised: send that answer
            for message in messages:
                await send(message)
            raise
        if answer is None:
            for message in messages:
                await send(message)
            return
        await self._send(send, answer, if_none_match)

    async def _compute(
        self,
        scope: Scope,
        receive: Receive,
        endpoint: Endpoint,
        organization: str | None,
        prefix: str | None,
        key: Key,
        versions: Versions,
        users_at: Versions,
        monotonic: float,
        messages: list[Message],
    ) -> Answer | None:
        """Run the route for `key` as the one computation at `versions` (concurrent
        misses share it), its messages into `messages`, and keep its answer.

        `users_at`: the version of who may see what before the key's owner was
        decided. Moved since, the answer may have been computed under another role
        than the key's audience (a demotion between the two): it is not kept, not even
        a list that may lag. A change heard after the answer is kept clears it."""
        state = self.state
        flight_key = (key, versions)
        future: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        state.flights[flight_key] = future

        async def capture(message: Message) -> None:
            messages.append(message)

        clock = _ClockHint()
        if endpoint.clock_bound:
            scope[CLOCK_SCOPE_KEY] = clock
        answer: Answer | None = None
        try:
            await self.app(scope, receive, capture)
            answer = _answer(messages)
        finally:
            del state.flights[flight_key]
            future.set_result(answer)
        if answer is None:
            return None
        moved = self._versions(endpoint, organization, prefix) != versions
        if (moved and not endpoint.may_lag) or state.versions.of(_USERS) != users_at:
            # a list that may lag is kept anyway, at the versions read before it began:
            # it shows every change announced before then, and lags from then on
            self._unkept["moved"].inc()
        elif not state.serving(time.time(), self._clock()):
            self._unkept["not_serving"].inc()
        else:
            fresh_until = math.inf
            if endpoint.clock_bound:
                # `monotonic` was read before the transaction began: never later than told
                told = CLOCK_MAX_AGE if clock.seconds is None else clock.seconds
                fresh_until = monotonic + told
            if fresh_until > monotonic:
                state.cache.put(key, versions, fresh_until, answer, computed_at=monotonic)
            else:
                self._unkept["clock"].inc()
        return answer

    def _refresh_in_background(
        self,
        scope: Scope,
        endpoint: Endpoint,
        organization: str | None,
        prefix: str | None,
        key: Key,
        versions: Versions,
        users_at: Versions,
    ) -> None:
        state = self.state
        state.refreshing.add(key)
        request_scope = {k: v for k, v in scope.items() if k != CLOCK_SCOPE_KEY}

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def refresh() -> None:
            try:
                await self._compute(
                    request_scope,
                    receive,
                    endpoint,
                    organization,
                    prefix,
                    key,
                    versions,
                    users_at,
                    self._clock(),
                    [],
                )
            except Exception as exc:  # the next request past the bound computes it
                log.warning("api_cache_refresh_failed", error=str(exc))
            finally:
                state.refreshing.discard(key)

        self._refreshes.inc()
        task = asyncio.get_running_loop().create_task(refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _versions(
        self, endpoint: Endpoint, organization: str | None, prefix: str | None
    ) -> Versions:
        versions = self.state.versions
        if organization is not None:
            return versions.of_organization(endpoint.tables, organization)
        if prefix is not None:
            return versions.of_id_prefix(endpoint.tables, prefix)
        return versions.of(endpoint.tables)

    async def _send(self, send: Send, answer: Answer, if_none_match: bytes | None) -> None:
        if _matches(if_none_match, answer.etag):
            self._not_modified.inc()
            await send(
                {
                    "type": "http.response.start",
                    "status": 304,
                    "headers": answer.not_modified_headers(),
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": answer.headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _write(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A write: once it has answered (its transaction is over), every version moves
        on, so no answer computed before it is served after it, its author's included.

        Only a write that may have changed something: one whose credential verifies
        and that is not answered with a client error (4xx: the write routes change
        nothing when they refuse; a 401 or an unknown path reaches no statement), and
        whose route did not say it changed nothing (`changed_nothing`: acknowledging
        again). Anybody could otherwise empty every user's kept answers with one
        unauthenticated POST, any user by repeating one. A change made all the same is
        announced by the database like any other."""
        try:
            self.verifier.verify(one_authorization(_authorizations(scope)))
        except Unauthenticated:
            await self.app(scope, receive, send)  # the route answers 401, writing nothing
            return
        refused = False

        async def send_after_commit(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start":
                refused = 400 <= message["status"] < 500 or scope.get(CHANGED_NOTHING, False)
                if not refused:
                    self.state.changed_everything()
            await send(message)

        try:
            await self.app(scope, receive, send_after_commit)
        finally:
            if not (refused or scope.get(CHANGED_NOTHING, False)):
                self.state.changed_everything()


CHANGED_NOTHING: Final = "healthscore.changed_nothing"
"""Set (True) in a write's ASGI scope by a route that answers without having changed
anything (`changed_nothing`): its answer moves no version."""


def changed_nothing(scope: Scope) -> None:
    """The write being answered changed nothing (a repeated acknowledgment): it keeps
    every kept answer, so that repeating it cannot empty everybody's at will."""
    scope[CHANGED_NOTHING] = True


def _authorizations(scope: Scope) -> list[str]:
    return [v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"]
