"""The /api/v1 endpoints: verify the caller, bind them in the database, query, shape.

No endpoint looks at the caller's role: each runs its statements in a
transaction in which row-level security sees the verified user, and answers
404 for whatever the policies hide.
"""

from __future__ import annotations

import math
import re
import unicodedata
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

import asyncpg
import orjson
from fastapi import APIRouter, Body, Path, Query, Request, Response
from pydantic import BaseModel, BeforeValidator
from pydantic_core import PydanticCustomError

from healthscore.api.auth import one_authorization
from healthscore.api.cache import changed_nothing, changes_by_clock_in
from healthscore.api.cursor import (
    Cursor,
    decode_cursor,
    numeric_value,
    real_value,
    time_value,
)
from healthscore.api.models import (
    Backtest,
    Freshness,
    Interaction,
    InteractionPage,
    LiveAlerts,
    Me,
    Milestone,
    MilestoneList,
    OrganizationDetail,
    OrganizationHistory,
    OrganizationPage,
    Problem,
    RewardDelivery,
    ScoreQuality,
)
from healthscore.api.problems import ApiProblem, not_found
from healthscore.api.session import Session, bound_session, fetch_as
from healthscore.api.state import ApiState
from healthscore.contracts._common import MAX_FUTURE_SKEW
from healthscore.contracts.enums import (
    RISK_LEVEL_ORDER,
    HealthStatus,
    InteractionStatus,
    InteractionType,
    MilestoneType,
    RiskLevel,
)
from healthscore.core.bands import RISK_LEVEL_EDGES
from healthscore.json_keys import repeated_key
from healthscore.store import read_api as q

PROBLEMS: Final[dict[int | str, dict[str, Any]]] = {
    401: {"model": Problem, "description": "Missing, expired or forged bearer token."},
    422: {"model": Problem, "description": "A parameter is invalid."},
}
NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {
    404: {"model": Problem, "description": "No such organization, or not visible to you."}
}
router = APIRouter(prefix="/api/v1", responses=PROBLEMS)


def _written_in_digits(value: object) -> object:
    """A count in the query string is digits alone: int() also reads "1_0", " 10",
    "+10" and other scripts' digits, which no client means as a count."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise PydanticCustomError("int_digits", "Input should be an integer written in digits")
    return value


Digits = BeforeValidator(_written_in_digits)
Limit = Annotated[int, Query(ge=1, le=200, description="Items per page."), Digits]
CursorText = Annotated[
    str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
]
OrganizationId = Annotated[uuid.UUID, Path(description="The organization's id.")]
MILESTONE_LIMIT: Final = 17


@asynccontextmanager
async def _session(
    request: Request, *, writes: bool = False, generic_plans: bool = False, searching: bool = False
) -> AsyncIterator[Session]:
    state: ApiState = request.app.state.api
    principal = state.verifier.verify(one_authorization(request.headers.getlist("authorization")))
    async with bound_session(
        state.pool,
        state.signing_key,
        principal,
        writes=writes,
        generic_plans=generic_plans,
        searching=searching,
    ) as session:
        yield session


async def _fetch_as_caller(request: Request, statement: str, *args: Any) -> asyncpg.Record | None:
    """One statement that logs the caller in, reads and logs out (session.fetch_as)."""
    state: ApiState = request.app.state.api
    principal = state.verifier.verify(one_authorization(request.headers.getlist("authorization")))
    return await fetch_as(state.pool, state.signing_key, principal, statement, *args)


def _f(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _page_cursor(
    rows: Sequence[asyncpg.Record], limit: int, sort: str, key: str, id_column: str
) -> str | None:
    if len(rows) <= limit:
        return None
    last = rows[limit - 1]
    value = last[key]
    return Cursor(sort, None if value is None else str(value), last[id_column]).encode()


# --- organizations ------------------------------------------------------------------

OrganizationSort = Literal["churn_probability", "health_score", "score_change_7d"]
# fullmatch: `$` would also match before a final newline, which uuid.UUID then refuses
_PREFIX = re.compile(r"[0-9a-fA-F-]{1,36}")
# An id prefix of this many hex digits or more is searched by its id range first, then
# sorted: it selects 1/256 of the organizations or fewer (uuids are random), fewer rows
# than walking the sort's index to fill a page would read (51 * 16^digits). One digit
# (1/16) walks the sort's index (read_api.py, "prefix search").
RANGE_FIRST_DIGITS: Final = 2


def read_by_id_range_first(prefix: str | None) -> bool:
    """Whether the prefix search reads its id range before sorting (RANGE_FIRST_DIGITS)."""
    return prefix is not None and len(prefix.replace("-", "")) >= RANGE_FIRST_DIGITS


def _id_range(prefix: str | None) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    if prefix is None:
        return None, None
    digits = prefix.replace("-", "").lower()
    if not _PREFIX.fullmatch(prefix) or not 0 < len(digits) <= 32:
        raise ApiProblem(422, "invalid-request", "q must be the start of an organization id")
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


NAME_WORDS_AT_MOST: Final = 8


def name_query(name: str) -> str | None:
    """The text-search query of a name search: each word typed (split at white space
    only) the start of a word of the name, all of them. PostgreSQL's own parser splits
    each word as it split the names when it indexed them (`shop.com`, `2.0`, `o'brien`,
    a Devanagari word, as one or as the name's parts), so each goes to it quoted, with
    nothing in it read as query syntax. None: no word with a letter or digit."""
    if "\x00" in name:
        # PostgreSQL's text cannot hold it: refused here, not a 500 from the driver
        raise ApiProblem(422, "invalid-request", "name must not contain a NUL character")
    # NFC as names are typed (and mostly stored): "é" one character, not e + accent
    words = [w for w in unicodedata.normalize("NFC", name).split() if any(c.isalnum() for c in w)]
    if len(words) > NAME_WORDS_AT_MOST:
        raise ApiProblem(
            422, "invalid-request", f"name may hold at most {NAME_WORDS_AT_MOST} words"
        )
    if not words:
        return None
    quoted = ("'" + w.replace("\\", "\\\\").replace("'", "''") + "':*" for w in words)
    return " & ".join(quoted)


@router.get("/organizations", response_model=OrganizationPage, tags=["organizations"])
async def list_organizations(
    request: Request,
    health_status: Annotated[
        list[HealthStatus] | None, Query(description="Bands to include (repeatable).")
    ] = None,
    risk_level: Annotated[
        list[RiskLevel] | None, Query(description="Risk levels to include (repeatable).")
    ] = None,
    factor: Annotated[
        str | None,
        Query(pattern=r"^[a-z0-9_]{1,64}$", description="Only organizations with this factor."),
    ] = None,
    q_: Annotated[
        str | None, Query(alias="q", max_length=36, description="Organization id prefix.")
    ] = None,
    name: Annotated[
        str | None,
        Query(
            max_length=100,
            description="Words of the organization's name (split at white space), each "
            "the start of a word in it as PostgreSQL's text search splits names, in any "
            "order, case ignored (`bloom vow`: Bloom & Vow Weddings; `shop.com`: Shop.com "
            "Ltd); at most 8. Not with q.",
        ),
    ] = None,
    sort: Annotated[
        OrganizationSort,
        Query(
            description="churn_probability: most likely to churn first; health_score: lowest "
            "first; score_change_7d: biggest weekly drop first."
        ),
    ] = "churn_probability",
    limit: Limit = 50,
    cursor: CursorText = None,
) -> Response:
    """Organizations by churn probability (or score, or weekly change), with filters."""
    after = decode_cursor(cursor, sort) if cursor else None
    searched = name is not None and bool(name.strip())
    if searched and q_ is not None:
        raise ApiProblem(422, "invalid-request", "give q (an id prefix) or name, not both")
    text_query = name_query(name) if searched and name is not None else None
    low, high = _id_range(q_)
    filters: list[Any] = [
        [s.value for s in health_status] if health_status else None,
        [r.value for r in risk_level] if risk_level else None,
        [{"factor": factor}] if factor else None,
        low,
        high,
    ]
    key = numeric_value(after) if after else None
    after_id = after.id if after else None
    range_first = read_by_id_range_first(q_)
    # the range-first statements read one index range and filter the rows it holds, so
    # one plan per connection serves every request (no planning per request)
    async with _session(request, generic_plans=range_first) as session:
        if searched:
            # a name without a letter or digit ('!!!') names no organization
            rows = (
                await session.conn.fetch(
                    q.LIST_ORGANIZATIONS_NAMED[sort],
                    *filters[:3],
                    text_query,
                    key,
                    after_id,
                    limit + 1,
                )
                if text_query is not None
                else []
            )
        elif range_first:
            rows = await session.conn.fetch(
                q.LIST_ORGANIZATIONS_IN_RANGE[sort], *filters, key, after_id, limit + 1
            )
        elif sort == "churn_probability":
            exact, low_edge, high_edge = _churn_range(risk_level)
            wanted = set(risk_level) if risk_level else set(RiskLevel)
            # one slice per band when bands are asked for, else the two risk-level slices
            statement, slices = (
                (q.LIST_ORGANIZATIONS_IN_BANDS_BY_CHURN, ())
                if health_status
                else (
                    q.LIST_ORGANIZATIONS_BY_CHURN,
                    (
                        bool(wanted & {RiskLevel.HIGH, RiskLevel.CRITICAL}),
                        bool(wanted & {RiskLevel.LOW, RiskLevel.MEDIUM}),
                    ),
                )
            )
            rows = await session.conn.fetch(
                statement,
                filters[0],
                None if exact else filters[1],
                *filters[2:],
                key,
                after_id,
                limit + 1,
                low_edge,
                high_edge,
                *slices,
            )
        elif sort == "health_score":
            rows = await session.conn.fetch(
                q.LIST_ORGANIZATIONS_BY_SCORE, *filters, key, after_id, limit + 1
            )
        else:
            rows = []
            in_null_tail = after is not None and after.value is None
            if not in_null_tail:
                rows = await session.conn.fetch(
                    q.LIST_ORGANIZATIONS_BY_CHANGE_7D, *filters, key, after_id, limit + 1
                )
            if len(rows) <= limit:
                rows += await session.conn.fetch(
                    q.LIST_ORGANIZATIONS_WITHOUT_CHANGE_7D,
                    *filters,
                    after_id if in_null_tail else None,
                    limit + 1 - len(rows),
                )
    # each item is an OrganizationSummary's JSON, built by the statement (queries.py);
    # tests validate pages against the model
    items = ",".join([r["item"] for r in rows[:limit]]).encode()
    cursor_json = orjson.dumps(_page_cursor(rows, limit, sort, "sort_key", "organization_id"))
    return Response(
        b'{"items":[' + items + b'],"next_cursor":' + cursor_json + b"}",
        media_type="application/json",
    )


def _churn_range(
    levels: list[RiskLevel] | None,
) -> tuple[bool, Decimal | None, Decimal | None]:
    """The churn probabilities [from, to) of these risk levels (bands.py's edges), and
    whether that range alone selects exactly them (a contiguous run of levels)."""
    if not levels:
        return True, None, None
    order = list(RISK_LEVEL_ORDER)
    edges = {level: Decimal(str(edge)) for edge, level in RISK_LEVEL_EDGES}
    edges[RiskLevel.LOW] = Decimal(0)
    picked = sorted({order.index(level) for level in levels})
    contiguous = picked == list(range(picked[0], picked[-1] + 1))
    lowest, highest = order[picked[0]], order[picked[-1]]
    upper = None if highest == order[-1] else edges[order[picked[-1] + 1]]
    return contiguous, edges[lowest], upper


def _json(model: BaseModel) -> Response:
    # pydantic serializes the validated model once; the route's response_model is
    # the documented contract, not a second validation pass
    return Response(model.model_dump_json(), media_type="application/json")


def _interaction(row: asyncpg.Record) -> Interaction:
    return Interaction(**{k: v for k, v in row.items() if k != "rank"}, rank=row["rank"])


def _built_json(text: str) -> Response:
    # a body that the statement built as the route's response_model's JSON
    # (read_api.py); tests validate it against the model
    return Response(text.encode(), media_type="application/json")


@router.get(
    "/organizations/{organization_id}",
    response_model=OrganizationDetail,
    responses=NOT_FOUND,
    tags=["organizations"],
)
async def get_organization(request: Request, organization_id: OrganizationId) -> Response:
    """The organization page: score, components, every factor, usage, interactions, alert."""
    row = await _fetch_as_caller(request, q.ORGANIZATION_PAGE, organization_id)
    if row is None:
        raise not_found("organization")
    # the page changes by the clock alone when its next follow-up falls due
    clock_changes_in = row["clock_changes_in"]
    changes_by_clock_in(request.scope, math.inf if clock_changes_in is None else clock_changes_in)
    return _built_json(row["page"])


@router.get(
    "/organizations/{organization_id}/history",
    response_model=OrganizationHistory,
    responses=NOT_FOUND,
    tags=["organizations"],
)
async def get_history(
    request: Request,
    organization_id: OrganizationId,
    days: Annotated[
        int,
        Query(ge=1, le=365, description="Days (UTC), the last the day of the latest score."),
        Digits,
    ] = 30,
) -> Response:
    """The daily score trail: each day's last score, churn probability and components."""
    row = await _fetch_as_caller(request, q.ORGANIZATION_HISTORY, organization_id, days)
    if row is None:
        raise not_found("organization")
    return _built_json(row["page"])


# --- milestones ---------------------------------------------------------------------


def _milestone(row: asyncpg.Record) -> Milestone:
    return Milestone(
        **{
            **row,
            "health_score_impact": float(row["health_score_impact"]),
            "reward_value": _f(row["reward_value"]),
        }
    )


@router.get(
    "/organizations/{organization_id}/milestones",
    response_model=MilestoneList,
    responses=NOT_FOUND,
    tags=["milestones"],
)
async def list_milestones(request: Request, organization_id: OrganizationId) -> MilestoneList:
    """The organization's achieved milestones with their acknowledgment and reward."""
    async with _session(request, generic_plans=True) as session:
        if not await session.conn.fetchval(q.ORGANIZATION_VISIBLE, organization_id):
            raise not_found("organization")
        rows = await session.conn.fetch(q.ORGANIZATION_MILESTONES, organization_id)
    return MilestoneList(items=[_milestone(r) for r in rows[:MILESTONE_LIMIT]])


MilestonePath = Annotated[MilestoneType, Path(description="Which of the 17 milestones.")]


@router.post(
    "/organizations/{organization_id}/milestones/{milestone_type}/acknowledge",
    response_model=Milestone,
    responses={404: {"model": Problem, "description": "No such milestone visible to you."}},
    tags=["milestones"],
)
async def acknowledge_milestone(
    request: Request, organization_id: OrganizationId, milestone_type: MilestonePath
) -> Milestone:
    """Acknowledge an achieved milestone. The database records the caller as acknowledger;
    acknowledging again changes nothing and answers the existing acknowledgment."""
    async with _session(request, writes=True) as session:
        acknowledged = await session.conn.fetchval(
            q.ACKNOWLEDGE_MILESTONE, organization_id, milestone_type.value
        )
        row = await session.conn.fetchrow(q.MILESTONE, organization_id, milestone_type.value)
    if row is None:
        raise not_found("milestone")
    if acknowledged is None:  # acknowledged before: the kept answers stay
        changed_nothing(request.scope)
    return _milestone(row)


@router.post(
    "/organizations/{organization_id}/milestones/{milestone_type}/reward",
    response_model=Milestone,
    responses={
        404: {"model": Problem, "description": "No such milestone visible to you."},
        409: {"model": Problem, "description": "No pending reward, or not acknowledged yet."},
    },
    tags=["milestones"],
)
async def record_reward(
    request: Request,
    organization_id: OrganizationId,
    milestone_type: MilestonePath,
    delivery: Annotated[RewardDelivery, Body()],
) -> Milestone:
    """Record what happened to an acknowledged milestone's pending reward (pending ->
    delivered or declined). Admins only, as row-level security decides."""
    _one_value_per_key(await request.body())
    if delivery.outcome == "declined" and delivery.delivered_at is not None:
        raise ApiProblem(422, "invalid-request", "delivered_at goes only with outcome delivered")
    delivered_at = delivery.delivered_at
    if delivered_at is not None and delivered_at > datetime.now(UTC) + MAX_FUTURE_SKEW:
        # a date typed a year off, or a clock ahead: the record would say it happened
        raise ApiProblem(422, "invalid-request", "delivered_at is in the future")
    async with _session(request, writes=True) as session:
        changed = await session.conn.fetchval(
            q.RECORD_REWARD,
            organization_id,
            milestone_type.value,
            delivery.outcome,
            delivery.delivered_at,
        )
        row = await session.conn.fetchrow(q.MILESTONE, organization_id, milestone_type.value)
    if row is None:
        raise not_found("milestone")
    if changed is None:
        if row["reward_status"] is None:
            raise ApiProblem(409, "no-reward", "this milestone grants no reward")
        if row["acknowledged_at"] is None:
            raise ApiProblem(409, "not-acknowledged", "acknowledge the milestone first")
        if row["reward_status"] == "pending":
            raise ApiProblem(
                422,
                "invalid-request",
                "delivered_at is before the milestone was achieved "
                f"({row['achieved_at'].isoformat()})",
            )
        raise ApiProblem(409, "reward-settled", f"the reward is already {row['reward_status']}")
    return _milestone(row)


def _one_value_per_key(body: bytes) -> None:
    """Refuse a JSON body naming a key twice in one object (422). The framework's parser
    keeps the last value, a proxy or log that keeps the first would read another write
    (`"outcome": "delivered", "outcome": "declined"`); RFC 8259 leaves it to each parser,
    and the topics refuse it too (`duplicate_key`). The body is valid JSON of at most
    MAX_BODY_BYTES here: the framework parsed it before the route ran."""
    shown = repeated_key(body)
    if shown is not None:
        raise ApiProblem(
            422, "invalid-request", f"the body names the key {shown} twice in one object"
        )


# --- interactions -------------------------------------------------------------------

InteractionSort = Literal["newest", "oldest", "follow_up", "relevance"]
_INTERACTION_STATEMENTS: Final = {
    "newest": (q.LIST_INTERACTIONS_NEWEST, "opened_at"),
    "oldest": (q.LIST_INTERACTIONS_OLDEST, "opened_at"),
    "follow_up": (q.LIST_INTERACTIONS_FOLLOW_UP, "follow_up_at"),
    "relevance": (q.LIST_INTERACTIONS_RELEVANCE, "rank"),
}


def _cursor_value(cursor: Cursor) -> Any:
    return real_value(cursor) if cursor.sort == "relevance" else time_value(cursor)


@router.get("/interactions", response_model=InteractionPage, tags=["interactions"])
async def list_interactions(
    request: Request,
    status: Annotated[
        list[InteractionStatus] | None, Query(description="Statuses to include (repeatable).")
    ] = None,
    assigned_to: Annotated[
        Literal["me"] | None, Query(description="`me`: only those assigned to the caller.")
    ] = None,
    organization_id: Annotated[uuid.UUID | None, Query()] = None,
    type_: Annotated[
        list[InteractionType] | None,
        Query(alias="type", description="Interaction types to include (repeatable)."),
    ] = None,
    overdue: Annotated[
        bool | None,
        Query(
            description="true: only follow-ups due and not completed; false: only the "
            "others (no follow-up due, or done)."
        ),
    ] = None,
    q_: Annotated[
        str | None,
        Query(alias="q", min_length=3, max_length=200, description="Subject search."),
    ] = None,
    sort: Annotated[
        InteractionSort | None,
        Query(
            description="newest (default), oldest, follow_up (most overdue first; needs "
            "overdue=true), relevance (best match first; the default with q)."
        ),
    ] = None,
    limit: Limit = 50,
    cursor: CursorText = None,
) -> Response:
    """Support interactions: the support queue, an organization's timeline, search."""
    chosen: str = sort or ("relevance" if q_ else "follow_up" if overdue else "newest")
    if q_ is not None and "\x00" in q_:
        # PostgreSQL's text cannot hold it: the statement would fail
        raise ApiProblem(422, "invalid-request", "q must not contain a NUL character")
    if q_ is not None:
        q_ = unicodedata.normalize("NFC", q_)  # as the subjects are stored
    if chosen == "relevance" and not q_:
        raise ApiProblem(422, "invalid-request", "sort=relevance needs q")
    if chosen == "follow_up" and not overdue:
        raise ApiProblem(422, "invalid-request", "sort=follow_up needs overdue=true")
    after = decode_cursor(cursor, chosen) if cursor else None
    statement, key = _INTERACTION_STATEMENTS[chosen]
    async with _session(request, searching=q_ is not None) as session:
        rows = await session.conn.fetch(
            statement,
            [s.value for s in status] if status else None,
            session.user_id if assigned_to == "me" else None,
            organization_id,
            [t.value for t in type_] if type_ else None,
            overdue,
            q_,
            _cursor_value(after) if after else None,
            None if after is None else after.value is None,
            after.id if after else None,
            limit + 1,
        )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        value = last[key]
        text = None if value is None else (repr(value) if key == "rank" else value.isoformat())
        next_cursor = Cursor(chosen, text, last["id"]).encode()
    return _json(
        InteractionPage(items=[_interaction(r) for r in rows[:limit]], next_cursor=next_cursor)
    )


# --- score quality ------------------------------------------------------------------


@router.get(
    "/score-quality",
    response_model=ScoreQuality,
    responses={
        404: {
            "model": Problem,
            "description": "Not computed yet, or not visible to you (admins only).",
        }
    },
    tags=["score quality"],
)
async def get_score_quality(request: Request) -> ScoreQuality:
    """How far to trust the scores: what the live model was accepted on (held-out
    organizations) beside how its live alerts have turned out so far."""
    async with _session(request, generic_plans=True) as session:
        row = await session.conn.fetchrow(q.SCORE_QUALITY)
    if row is None:
        raise ApiProblem(
            404,
            "not-found",
            "no score quality figures are visible to you: admins see them once the "
            "service has labelled its alerts (within OUTCOME_INTERVAL_SECONDS of its start)",
        )
    shown = orjson.loads(row["backtest"])
    figures = shown.get("figures", {})
    labelled = row["episodes_churned"] + row["episodes_retained"]
    return ScoreQuality(
        score_model_version=row["score_model_version"],
        backtest=Backtest(
            source=shown.get("source"),
            held_out_organizations=shown.get("held_out_organizations"),
            roc_auc_30d=figures.get("auc_30d_churn_probability"),
            brier_skill=figures.get("brier_skill_vs_base_rate"),
            churners_alerted=figures.get("recall"),
            median_lead_days=figures.get("median_lead_days"),
            false_alerts_per_100_healthy_per_month=figures.get(
                "false_alerts_per_100_healthy_per_month"
            ),
            alert_precision=figures.get("precision"),
        ),
        live_alerts=LiveAlerts(
            episodes_churned=row["episodes_churned"],
            episodes_retained=row["episodes_retained"],
            episodes_pending=row["episodes_pending"],
            precision=row["episodes_churned"] / labelled if labelled else None,
            churned_organizations=row["churners"],
            churned_organizations_alerted=row["churners_alerted"],
            lead_days=row["lead_days_quartiles"],
        ),
        computed_at=row["computed_at"],
    )


# --- freshness ----------------------------------------------------------------------


@router.get("/freshness", response_model=Freshness, tags=["organizations"])
async def freshness(request: Request) -> Freshness:
    """How far the scores are behind the events the service applied (one figure for
    every organization; the dashboard shows it beside when it last fetched)."""
    async with _session(request, generic_plans=True) as session:
        row = await session.conn.fetchrow(q.READ_MODEL_FRESHNESS)
    assert row is not None
    return Freshness(read_model_staleness_seconds=row["staleness"], as_of=row["as_of"])


# --- the caller ---------------------------------------------------------------------


@router.get("/me", response_model=Me, tags=["identity"])
async def me(request: Request) -> Me:
    """Who the token says you are, and your role (as the database knows it)."""
    async with _session(request, generic_plans=True) as session:
        row = await session.conn.fetchrow(q.ME, session.user_id)
    if row is None:
        raise not_found("user")
    return Me(
        user_id=row["id"],
        email=row["email"],
        full_name=row["full_name"],
        role=row["role"],
        organization_id=row["organization_id"],
    )
