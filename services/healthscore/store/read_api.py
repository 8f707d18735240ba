"""Every statement the read API runs: named, with $n parameters, nothing from input.

They run as cs_dashboard after `app_login`, so row-level security filters every
table they touch; none of them mentions a role. A row the policies hide is
simply absent, which the API answers with 404 exactly like a missing one.

Lists are keyset-paginated: each sort has a unique key (the sort column, then
the row id) and the cursor carries the last row's key. Optional filters are
written `($n IS NULL OR ...)`; the pool plans with the values
(`plan_cache_mode=force_custom_plan`), so an absent filter costs nothing and a
present one can use its index.

Some sorts are served by more than one index, one per slice of the rows, and
the statement spells the slices out as UNION ALL branches that PostgreSQL
merges in order (MergeAppend, stopping at the limit):

* churn probability, descending: the seed's partial index on high and critical
  risk levels, then its complement on low and medium (migration 0030);
* health score, ascending: the seed's (health_status, health_score) index once
  per band, worst band first (the band is a function of the score);
* 7-day change, ascending: the seed's index on score_change_7d; the
  organizations without a 7-day history (NULL) come last, by id, from a second
  statement run only when the first runs out.

A branch that a filter rules out (risk level `low` for the high-risk slice)
is folded to a one-time `false` at planning, so it reads nothing. An id prefix
of two or more hex digits (q) is read by its id range first instead, one
statement per sort ("prefix search" below).
tests/integration/test_api_plans.py checks each sort and filter's plan.
"""

from __future__ import annotations

from typing import Final

# --- organizations ------------------------------------------------------------------

# $1 health_status[], $2 risk_level[], $3 factor (jsonb, e.g. [{"factor": "inactivity"}]),
# $4/$5 organization id range (prefix search), $6 cursor sort value, $7 cursor id, $8 limit
_ORG_COLUMNS = """organization_id, health_score, health_status, churn_probability, risk_level,
           score_change_7d, score_change_30d, scored_at, risk_factors"""

_ORG_FILTERS = """
      AND ($1::text[] IS NULL OR health_status = ANY($1::text[]))
      AND ($2::text[] IS NULL OR risk_level = ANY($2::text[]))
      AND ($3::jsonb IS NULL OR risk_factors @> $3::jsonb)
      AND ($4::uuid IS NULL OR organization_id BETWEEN $4::uuid AND $5::uuid)"""


# One row per organization of the page: `item`, the OrganizationSummary as JSON text,
# built here rather than in Python (decoding ten columns, numeric and jsonb among
# them, and shaping each row cost the API more than PostgreSQL spends building the
# text), `sort_key`, the sort column as text (exact, for the cursor), and the id.
# Numbers are float8 (as Python's float() of the numeric would be), timestamps in
# the session's time zone, which the API's pool sets to UTC; the three largest
# factors are the first three as stored (the projector writes each as factor, value,
# impact, detail, largest first).
_ORG_ITEM = """json_build_object(
           'organization_id', u.organization_id,
           'organization_name', o.name,
           'health_score', u.health_score::float8,
           'health_status', u.health_status,
           'churn_probability', u.churn_probability::float8,
           'risk_level', u.risk_level,
           'score_change_7d', u.score_change_7d::float8,
           'score_change_30d', u.score_change_30d::float8,
           'top_risk_factors', jsonb_path_query_array(u.risk_factors, '$[0 to 2]'),
           'scored_at', u.scored_at)::text"""


def _org_list(branches: list[str], order: str, sort_key: str, limit: str = "$8") -> str:
    union = "\n    UNION ALL\n".join(
        f"    SELECT * FROM ({b}) AS slice{i}" for i, b in enumerate(branches)
    )
    # the items of the page's rows only, not of every row a branch read
    return f"""
SELECT {_ORG_ITEM} AS item,
       {sort_key}::text AS sort_key, u.organization_id
FROM (
{union}
    ORDER BY {order}
    LIMIT {limit}
) AS u
LEFT JOIN organizations o ON o.id = u.organization_id
ORDER BY {order}"""


# $9/$10: the churn probabilities of the requested risk levels, [from, to): a level is
# a function of the probability, so the index scan starts and stops at its edges
# instead of filtering its way past the other levels (and for a contiguous run of
# levels the caller passes no level list at all: the planner, which cannot know that
# the two say the same, would multiply their selectivities and give up the index).
# $11/$12: whether the high-and-critical / low-and-medium slice is wanted at all.
def _churn_branch(levels: str, wanted: str) -> str:
    return f"""SELECT {_ORG_COLUMNS}
    FROM customer_health
    WHERE risk_level IN ({levels}) AND {wanted}{_ORG_FILTERS}
      AND ($9::numeric IS NULL OR churn_probability >= $9::numeric)
      AND ($10::numeric IS NULL OR churn_probability < $10::numeric)
      AND ($6::numeric IS NULL OR churn_probability <= $6::numeric)
      AND ($6::numeric IS NULL OR churn_probability < $6::numeric
           OR organization_id > $7::uuid)
    ORDER BY churn_probability DESC, organization_id
    LIMIT $8"""


def _score_branch(band: str) -> str:
    return f"""SELECT {_ORG_COLUMNS}
    FROM customer_health
    WHERE health_status = '{band}'
      AND ($1::text[] IS NULL OR '{band}' = ANY($1::text[])){_ORG_FILTERS}
      AND ($6::numeric IS NULL OR health_score >= $6::numeric)
      AND ($6::numeric IS NULL OR health_score > $6::numeric OR organization_id > $7::uuid)
    ORDER BY health_score, organization_id
    LIMIT $8"""


LIST_ORGANIZATIONS_BY_CHURN: Final = _org_list(
    [
        _churn_branch("'high', 'critical'", "$11::bool"),
        _churn_branch("'low', 'medium'", "$12::bool"),
    ],
    "churn_probability DESC, organization_id",
    "u.churn_probability",
)


# $1-$10 as LIST_ORGANIZATIONS_BY_CHURN, with $1 given (the bands): one scan of
# customer_health_status_churn_idx (migration 0031) per requested band, merged in churn
# order; the bands not asked for fold away. (The statement above would walk the churn
# indexes past the other bands: the probability is not a function of the band.)
def _band_churn_branch(band: str) -> str:
    return f"""SELECT {_ORG_COLUMNS}
    FROM customer_health
    WHERE health_status = '{band}' AND '{band}' = ANY($1::text[]){_ORG_FILTERS}
      AND ($9::numeric IS NULL OR churn_probability >= $9::numeric)
      AND ($10::numeric IS NULL OR churn_probability < $10::numeric)
      AND ($6::numeric IS NULL OR churn_probability <= $6::numeric)
      AND ($6::numeric IS NULL OR churn_probability < $6::numeric
           OR organization_id > $7::uuid)
    ORDER BY churn_probability DESC, organization_id
    LIMIT $8"""


LIST_ORGANIZATIONS_IN_BANDS_BY_CHURN: Final = _org_list(
    [_band_churn_branch(band) for band in ("critical", "at_risk", "good", "excellent")],
    "churn_probability DESC, organization_id",
    "u.churn_probability",
)

# worst band first; the band is a function of the score, so this is score order
LIST_ORGANIZATIONS_BY_SCORE: Final = _org_list(
    [_score_branch(band) for band in ("critical", "at_risk", "good", "excellent")],
    "health_score, organization_id",
    "u.health_score",
)

# biggest drop first; the organizations without a 7-day history (NULL) follow, from
# the next statement, read only when this one runs out (sorting them would
# otherwise cost every page)
LIST_ORGANIZATIONS_BY_CHANGE_7D: Final = _org_list(
    [
        f"""SELECT {_ORG_COLUMNS}
    FROM customer_health
    WHERE score_change_7d IS NOT NULL{_ORG_FILTERS}
      AND ($6::numeric IS NULL OR score_change_7d >= $6::numeric)
      AND ($6::numeric IS NULL OR score_change_7d > $6::numeric
           OR organization_id > $7::uuid)
    ORDER BY score_change_7d, organization_id
    LIMIT $8"""
    ],
    "score_change_7d, organization_id",
    "u.score_change_7d",
)

# $1-$5 as above, $6 cursor id, $7 limit
LIST_ORGANIZATIONS_WITHOUT_CHANGE_7D: Final = _org_list(
    [
        f"""SELECT {_ORG_COLUMNS}
    FROM customer_health
    WHERE score_change_7d IS NULL{_ORG_FILTERS}
      AND ($6::uuid IS NULL OR organization_id > $6::uuid)
    ORDER BY organization_id
    LIMIT $7"""
    ],
    "organization_id",
    "NULL",
    limit="$7",
)

# --- prefix search: the id range first ---------------------------------------------


# With a prefix of the organization id (q), the rows in its id range are few: a prefix
# of k hex digits selects 16^-k of the ids (uuids are random), 390 of 100,000 for two
# digits. The sliced statements above read that range once per slice, each slice with
# its own row-level-security InitPlan, or walk the sort's index past the other ids
# (51 * 16^k rows for a page of 50), and are planned at every request. These read the
# range of customer_health_organization_id_key once and sort what it holds (top-N),
# for every sort, with a plan that serves any values (the route runs them with generic
# plans); the keyset and the order are those of the statements above, so a cursor
# means the same in both. The route picks them by the prefix's width (routes.py): for
# one hex digit (6,250 of 100,000 rows) walking the sort's index is cheaper (about 816
# rows for a page).
# $1 health_status[], $2 risk_level[], $3 factor, $4/$5 the id range (given), $6 cursor
# sort value, $7 cursor id, $8 limit.
def _selected_list(
    selection: str, order: str, keyset: str, sort_key: str, cursor: tuple[str, str, str]
) -> str:
    value, last_id, limit = cursor
    return _org_list(
        [
            f"""SELECT {_ORG_COLUMNS}
    FROM customer_health
    WHERE {selection}
      AND ($1::text[] IS NULL OR health_status = ANY($1::text[]))
      AND ($2::text[] IS NULL OR risk_level = ANY($2::text[]))
      AND ($3::jsonb IS NULL OR risk_factors @> $3::jsonb)
      AND {keyset.format(value=value, id=last_id)}
    ORDER BY {order}
    LIMIT {limit}"""
        ],
        order,
        sort_key,
        limit=limit,
    )


# each sort's keyset, its cursor's value and id as {value} and {id}; the 7-day change's
# both parts in one (ascending puts NULL last): a cursor with no value (value NULL, id
# given) is in the NULL part, as in the statements above
_KEYSETS: Final = {
    "churn_probability": (
        "churn_probability DESC, organization_id",
        """({value}::numeric IS NULL OR churn_probability < {value}::numeric
           OR (churn_probability = {value}::numeric AND organization_id > {id}::uuid))""",
        "u.churn_probability",
    ),
    "health_score": (
        "health_score, organization_id",
        """({value}::numeric IS NULL OR health_score > {value}::numeric
           OR (health_score = {value}::numeric AND organization_id > {id}::uuid))""",
        "u.health_score",
    ),
    "score_change_7d": (
        "score_change_7d, organization_id",
        """({id}::uuid IS NULL
           OR (score_change_7d IS NULL
               AND ({value}::numeric IS NOT NULL OR organization_id > {id}::uuid))
           OR score_change_7d > {value}::numeric
           OR (score_change_7d = {value}::numeric AND organization_id > {id}::uuid))""",
        "u.score_change_7d",
    ),
}

LIST_ORGANIZATIONS_IN_RANGE: Final = {
    sort: _selected_list(
        "organization_id BETWEEN $4::uuid AND $5::uuid", *keyset, cursor=("$6", "$7", "$8")
    )
    for sort, keyset in _KEYSETS.items()
}

# --- name search ------------------------------------------------------------------------

# The organizations whose name has a word starting with each word searched ('bloom vow'
# finds "Bloom & Vow Weddings"), read from organizations_name_words_idx (migration 0113),
# then sorted and paged like the lists above. $4 is the text-search query
# (routes.name_query: each word quoted, a prefix), parsed by the configuration that
# parsed the names, a constant the planner reads with its value. Names are read under
# the caller's row-level security: an organization whose name the caller may not see is
# not found. $1-$3 the filters, $4 the query, $5 cursor sort value, $6 cursor id,
# $7 limit.
LIST_ORGANIZATIONS_NAMED: Final = {
    sort: _selected_list(
        """organization_id IN (
          SELECT n.id FROM organizations n
          WHERE n.name IS NOT NULL
            AND to_tsvector('simple'::regconfig, n.name)
                @@ to_tsquery('simple'::regconfig, $4::text))""",
        *keyset,
        cursor=("$5", "$6", "$7"),
    )
    for sort, keyset in _KEYSETS.items()
}


# The organization page and its history: each one statement that logs the caller in,
# builds the response model's JSON text in PostgreSQL and logs out (migration 0052), so
# a request is one round trip in that statement's own transaction. $1 the caller's
# identity token (store.identity.mint_token), $2 organization id. No row: no such
# organization, or hidden by row-level security.
# Columns: page (OrganizationDetail JSON), clock_changes_in (seconds until the page
# changes by the clock alone, its next open follow-up falling due; NULL: never).
# the audience whose members see the same rows as the token's user (migration 0061)
AUDIENCE: Final = "SELECT app_audience($1) AS audience"

ORGANIZATION_PAGE: Final = "SELECT page, clock_changes_in FROM app_organization_page($1, $2)"
# $3 days (UTC) ending with the day of the latest score. Column: page
# (OrganizationHistory JSON).
ORGANIZATION_HISTORY: Final = "SELECT page FROM app_organization_history($1, $2, $3)"

ORGANIZATION_VISIBLE: Final = "SELECT true FROM customer_health WHERE organization_id = $1"

# --- milestones -------------------------------------------------------------------------

_MILESTONE_COLUMNS = """milestone_type, achieved_at, triggering_event_id, health_score_impact,
       reward_type, reward_value, reward_status, reward_delivered_at, acknowledged_at,
       acknowledged_by, (SELECT u.full_name FROM user_profiles u WHERE u.id = acknowledged_by)
           AS acknowledged_by_name"""

# $1 organization id
ORGANIZATION_MILESTONES: Final = f"""
SELECT {_MILESTONE_COLUMNS}
FROM success_milestones
WHERE organization_id = $1
ORDER BY achieved_at DESC, milestone_type
"""

# $1 organization id, $2 milestone type
MILESTONE: Final = f"""
SELECT {_MILESTONE_COLUMNS}
FROM success_milestones
WHERE organization_id = $1 AND milestone_type = $2
"""

# acknowledged_by is set by the database from the verified identity (0023)
ACKNOWLEDGE_MILESTONE: Final = """
UPDATE success_milestones SET acknowledged_at = now()
WHERE organization_id = $1 AND milestone_type = $2 AND acknowledged_at IS NULL
RETURNING milestone_type
"""

# $3 delivered | declined, $4 when delivered (NULL: now)
# a reward is not delivered before its milestone was achieved (the route says which
# condition failed from the row as it stands)
RECORD_REWARD: Final = """
UPDATE success_milestones
SET reward_status = $3::text,
    reward_delivered_at = CASE WHEN $3::text = 'delivered'
                               THEN coalesce($4::timestamptz, now()) END
WHERE organization_id = $1 AND milestone_type = $2
  AND reward_status = 'pending' AND acknowledged_at IS NOT NULL
  AND ($3::text <> 'delivered' OR coalesce($4::timestamptz, now()) >= achieved_at)
RETURNING milestone_type
"""

# --- interactions -----------------------------------------------------------------------

# $1 status[], $2 assigned_to, $3 organization id, $4 interaction_type[], $5 overdue (true:
# only those, false: none of them, NULL: either),
# $6 search text (pg_trgm word similarity: typos and word order are forgiven; a text
# without a trigram, as '%%%' or '!!!', matches nothing, and saying so first keeps the
# index from being read whole and every row rechecked: planned with the value, the
# test is a constant), $7 cursor
# sort value, $8 cursor is in the NULL part, $9 cursor id, $10 limit
_INTERACTION_COLUMNS = """i.id, i.organization_id, o.name AS organization_name, i.interaction_type,
       i.channel, i.status, i.priority, i.sentiment, i.outcome, i.assigned_to, i.subject,
       i.follow_up_required, i.follow_up_at, i.follow_up_completed_at, i.opened_at,
       i.resolved_at, i.closed_at, i.last_event_at,
       coalesce(i.follow_up_required AND i.follow_up_completed_at IS NULL
                AND i.follow_up_at <= now(), false) AS overdue"""

_INTERACTION_FILTERS = """
  AND ($1::text[] IS NULL OR i.status = ANY($1::text[]))
  AND ($2::uuid IS NULL OR i.assigned_to = $2::uuid)
  AND ($3::uuid IS NULL OR i.organization_id = $3::uuid)
  AND ($4::text[] IS NULL OR i.interaction_type = ANY($4::text[]))
  AND ($5::bool IS NOT TRUE OR (i.follow_up_required AND i.follow_up_completed_at IS NULL
                                AND i.follow_up_at <= now()))
  AND ($5::bool IS NOT FALSE OR NOT coalesce(i.follow_up_required
                                             AND i.follow_up_completed_at IS NULL
                                             AND i.follow_up_at <= now(), false))
  AND ($6::text IS NULL OR (cardinality(show_trgm($6::text)) > 0 AND $6::text <% i.subject))"""


def _interactions(rank: str, keyset: str, order: str) -> str:
    return f"""
SELECT {_INTERACTION_COLUMNS}, {rank} AS rank
FROM support_interactions i
LEFT JOIN organizations o ON o.id = i.organization_id
WHERE true{_INTERACTION_FILTERS}
  AND {keyset}
ORDER BY {order}
LIMIT $10"""


# newest first; interactions not opened yet (an update came first) lead
LIST_INTERACTIONS_NEWEST: Final = _interactions(
    "NULL::real",
    """($8::bool IS NULL
       OR ($8::bool AND (i.opened_at IS NOT NULL OR i.id > $9::uuid))
       OR (NOT $8::bool AND i.opened_at <= $7::timestamptz
           AND (i.opened_at < $7::timestamptz OR i.id > $9::uuid)))""",
    "i.opened_at DESC NULLS FIRST, i.id",
)

# oldest first (a queue); interactions not opened yet come last
LIST_INTERACTIONS_OLDEST: Final = _interactions(
    "NULL::real",
    """($8::bool IS NULL
       OR ($8::bool AND i.opened_at IS NULL AND i.id > $9::uuid)
       OR (NOT $8::bool AND (i.opened_at IS NULL OR (i.opened_at >= $7::timestamptz
           AND (i.opened_at > $7::timestamptz OR i.id > $9::uuid)))))""",
    "i.opened_at NULLS LAST, i.id",
)

# most overdue first (with the overdue filter, follow_up_at is never NULL)
LIST_INTERACTIONS_FOLLOW_UP: Final = _interactions(
    "NULL::real",
    """($8::bool IS NULL OR (i.follow_up_at >= $7::timestamptz
       AND (i.follow_up_at > $7::timestamptz OR i.id > $9::uuid)))""",
    "i.follow_up_at, i.id",
)

# best match first (pg_trgm word similarity of the search text within the subject)
LIST_INTERACTIONS_RELEVANCE: Final = _interactions(
    "word_similarity($6::text, i.subject)",
    """($8::bool IS NULL OR word_similarity($6::text, i.subject) < $7::real
       OR (word_similarity($6::text, i.subject) = $7::real AND i.id > $9::uuid))""",
    "rank DESC, i.id",
)


# --- score quality ----------------------------------------------------------------------

# the one row the outcome labeller writes (migration 0089; admins only, by its policy)
SCORE_QUALITY: Final = """
SELECT score_model_version, backtest::text AS backtest, episodes_churned, episodes_retained,
       episodes_pending, churners, churners_alerted, lead_days_quartiles, computed_at
FROM score_quality_summary
"""


# --- freshness --------------------------------------------------------------------------

# how far the read model is behind the events applied (migration 0111), and the
# database's clock it was read by
READ_MODEL_FRESHNESS: Final = "SELECT app_read_model_staleness() AS staleness, now() AS as_of"

# the readiness's schema check: the applied migrations' versions, as the request-scoped
# role may read them (migration 0115)
APPLIED_MIGRATIONS: Final = "SELECT app_applied_migrations()"

# --- the caller -------------------------------------------------------------------------

ME: Final = """
SELECT u.id, u.email, u.full_name, u.role, u.organization_id
FROM user_profiles u WHERE u.id = $1
"""
