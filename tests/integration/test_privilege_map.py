"""The privilege map of the migrated schema, read from the live catalog and pinned.

Every privilege the project's roles and PUBLIC hold on the database's objects, each
with the code path that needs it (which statement, run by which process, as which
role). A privilege gained later, by a new migration or a changed one, fails this test
by name until it is justified here; one lost fails it too (remove its line and its
reason). Ownership is tests/integration/test_migrations.py's
(`test_owner_owns_every_table_sequence_and_function`): the owner's own privileges on
what it owns are not listed. What each role can and cannot do with these privileges,
in real sessions, is tests/integration/test_rls.py's.

Processes and their roles: `serve` (the consumer, the projector, the sweep, the relays,
the gauges), `replay`, `import`, `evaluate`, `state`, `lag` and the `offsets` commands
connect with DATABASE_URL and run as healthscore_writer (DATABASE_ROLE); `api` runs each
request's session, and its change listener, as cs_dashboard (API_DATABASE_ROLE);
`erase` runs as healthscore_eraser (its login a member of it);
`migrate` runs as MIGRATION_DATABASE_URL's role and makes healthscore_owner (NOLOGIN)
own everything; healthscore_owner's SECURITY DEFINER functions run as it.
"""

from __future__ import annotations

import re
from typing import Final

import asyncpg
import pytest

from healthscore.store.schema_catalog import ROLES

WRITER = "healthscore_writer"
DASHBOARD = "cs_dashboard"
OWNER = "healthscore_owner"
ERASER = "healthscore_eraser"

# --- the map -----------------------------------------------------------------------------

ROLE_ATTRIBUTES: Final = {
    # NOLOGIN: logins are members (deploy/compose/init); never superuser or BYPASSRLS,
    # which would skip every policy (migration 0001 refuses such a role)
    role: "NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION INHERIT"
    for role in ROLES
}

SCHEMA: Final = {
    # the migrations make it own every table and function (ALTER ... OWNER TO)
    f"{OWNER}: CREATE on schema public",
    f"{OWNER}: USAGE on schema public",
    # app_applied_migrations() (SECURITY DEFINER, the owner's) reads the runner's table
    f"{OWNER}: SELECT on table schema_migrations",
    f"{WRITER}: USAGE on schema public",
    f"{DASHBOARD}: USAGE on schema public",
    # `healthscore erase` (store/erasure.py)
    f"{ERASER}: USAGE on schema public",
    # PostgreSQL's default since 15 (no CREATE: 0081 revokes it where a database has it)
    "PUBLIC: USAGE on schema public",
}

# whole-table privileges
TABLES: Final = {
    # store/sql.py: READ_INTERACTIONS, UPSERT_INTERACTIONS' ON CONFLICT and CASE
    f"{WRITER}: SELECT on table support_interactions",
    # UPSERT_CUSTOMER_HEALTH (RETURNING, previous_score), DISTRIBUTION, REPLAYED
    f"{WRITER}: SELECT on table customer_health",
    # LOCK_STATES, PICK_SILENT, COUNT_SILENT, PENDING_PROJECTION, STATE_OF, QUEUE_AGAIN
    f"{WRITER}: SELECT on table organization_state",
    # READ_EVENT_DIGESTS, REPLAYED; UNCLAIM_EVENT_IDS and PURGE_PROCESSED_EVENTS delete
    f"{WRITER}: SELECT on table processed_events",
    f"{WRITER}: DELETE on table processed_events",
    # READ_OFFSETS, LOCK_OFFSETS_AND_CLAIM_EVENT_IDS, EVENT_TIME_FRONTIERS, STORED_GROUPS
    f"{WRITER}: SELECT on table consumer_offsets",
    # the outbox relay: PENDING_ALERTS, OUTBOX_STATS; REPLAYED; quality's outcomes
    f"{WRITER}: SELECT on table alert_outbox",
    # the projector: PENDING_PROJECTION (FOR UPDATE), OLDEST_PENDING_PROJECTION;
    # MARK_PROJECTED, TAKE_OWN_PENDING and DEQUEUE_PROJECTED delete
    f"{WRITER}: SELECT on table read_model_pending",
    f"{WRITER}: DELETE on table read_model_pending",
    # the projector: OWED_HEALTH_FEED, OWED_HEALTH_FEED_AGE, TAKE_OWN_PENDING's
    # NOT EXISTS; FEED_PUBLISHED deletes
    f"{WRITER}: SELECT on table health_feed_owed",
    f"{WRITER}: DELETE on table health_feed_owed",
    # the dead-letter relay: PENDING_DEAD_LETTERS, DEAD_LETTER_STATS; DELETE_DEAD_LETTERS
    f"{WRITER}: SELECT on table dead_letter_outbox",
    f"{WRITER}: DELETE on table dead_letter_outbox",
    # WITHHOLD_DEAD_LETTERS' ON CONFLICT (the dead-letter relay)
    f"{WRITER}: SELECT on table dead_letters_withheld",
    # store/quality.py (the shadow scorer in `serve`, `evaluate`, churn-label `import`)
    f"{WRITER}: SELECT on table shadow_health",
    f"{WRITER}: SELECT on table shadow_alerts",
    # RECORD_SHADOW_MODEL's ON CONFLICT, RECORDED_SHADOW_MODEL (the shadow scorer)
    f"{WRITER}: SELECT on table shadow_models",
    f"{WRITER}: SELECT on table churn_labels",
    f"{WRITER}: SELECT on table alert_outcomes",
    # store/quality.py SAVE_SCORE_QUALITY_SUMMARY's ON CONFLICT (the outcome labeller)
    f"{WRITER}: SELECT on table score_quality_summary",
    # store/promotion.py: RECORDED_MODEL, SERVED_MODELS (`serve` at start, `promote`)
    f"{WRITER}: SELECT on table score_models",
    # REPLAY_RUN (`replay` resuming)
    f"{WRITER}: SELECT on table replay_runs",
    # store/migrate.py missing_migrations: `serve` refuses a database lacking migrations
    f"{WRITER}: SELECT on table schema_migrations",
    # the read API (store/read_api.py and the page functions of 0052/0074, invoker
    # functions), under row-level security
    f"{DASHBOARD}: SELECT on table customer_health",
    f"{DASHBOARD}: SELECT on table organizations",
    f"{DASHBOARD}: SELECT on table success_milestones",
    f"{DASHBOARD}: SELECT on table support_interactions",
    f"{DASHBOARD}: SELECT on table user_profiles",
    f"{DASHBOARD}: SELECT on table health_score_history",
    # store/read_api.py SCORE_QUALITY (admins only: its policy)
    f"{DASHBOARD}: SELECT on table score_quality_summary",
    # the tombstone: LOCK_OFFSETS_AND_CLAIM_EVENT_IDS, ERASED_AMONG and the NOT EXISTS of
    # INSERT_STATES, ENSURE_ORGANIZATIONS and ENSURE_STATE_ROWS
    f"{WRITER}: SELECT on table erased_organizations",
    # `healthscore erase` (store/erasure.py, as healthscore_eraser): RECORD_TOMBSTONE's
    # ON CONFLICT, ERASURE_UNFINISHED, FINISH_ERASURE's WHERE, ERASED (`erase --list`)
    f"{ERASER}: SELECT on table erased_organizations",
    # DELETE_ORGANIZATION (its policies below; the data cascades as the owner),
    # DELETE_PROCESSED_EVENTS (DELETE_DEAD_LETTERS: erase_dead_letters(), below)
    f"{ERASER}: DELETE on table organizations",
    f"{ERASER}: DELETE on table processed_events",
    # owed health-feed tombstones (0097): OWE_FEED_TOMBSTONE's ON CONFLICT and
    # FEED_TOMBSTONES_PUBLISHED (the eraser); OWED_FEED_TOMBSTONES,
    # FEED_TOMBSTONES_PUBLISHED and OWE_FEED_TOMBSTONES (the projector)
    f"{ERASER}: SELECT on table health_feed_tombstones_owed",
    f"{ERASER}: DELETE on table health_feed_tombstones_owed",
    f"{WRITER}: SELECT on table health_feed_tombstones_owed",
    f"{WRITER}: DELETE on table health_feed_tombstones_owed",
}

_HISTORY_SCORE = (
    "scored_at health_score churn_probability risk_level components score_model_version cause"
)
_HEALTH_COLUMNS = (
    "health_score engagement_score adoption_score milestone_score support_score growth_score"
    " churn_probability risk_factors feature_usage previous_score score_change_7d"
    " score_change_30d active_users_30d open_interactions milestones_achieved"
    " last_activity_at last_login_at scored_at score_model_version"
)
_INTERACTION_COLUMNS = (
    "interaction_type channel status priority sentiment outcome assigned_to subject"
    " follow_up_required follow_up_at follow_up_completed_at opened_at resolved_at closed_at"
    " first_event_at last_event_at field_event_times event_count"
)

_SUMMARY_COLUMNS = (
    "score_model_version backtest episodes_churned episodes_retained episodes_pending"
    " churners churners_alerted lead_days_quartiles"
)

# column privileges: (role, privilege, table) -> the columns
COLUMNS: Final = {
    # ENSURE_ORGANIZATIONS / ENSURE_USER_PROFILES: placeholders by id (ON CONFLICT (id)
    # reads it); the policies of 0021 keep name, plan, role, email at their defaults
    (WRITER, "INSERT", "organizations"): "id",
    (WRITER, "SELECT", "organizations"): "id",
    (WRITER, "INSERT", "user_profiles"): "id",
    (WRITER, "SELECT", "user_profiles"): "id",
    # UPSERT_CUSTOMER_HEALTH (previous_score: its DO UPDATE)
    (WRITER, "INSERT", "customer_health"): "organization_id " + _HEALTH_COLUMNS,
    (WRITER, "UPDATE", "customer_health"): _HEALTH_COLUMNS,
    # INSERT_MILESTONES (ON CONFLICT (organization_id, milestone_type) DO NOTHING);
    # acknowledgments and rewards are the dashboard's
    (
        WRITER,
        "INSERT",
        "success_milestones",
    ): "organization_id milestone_type achieved_at triggering_event_id health_score_impact"
    " reward_type reward_value reward_status",
    (WRITER, "SELECT", "success_milestones"): "organization_id milestone_type",
    # UPSERT_INTERACTIONS
    (WRITER, "INSERT", "support_interactions"): "id organization_id " + _INTERACTION_COLUMNS,
    (WRITER, "UPDATE", "support_interactions"): _INTERACTION_COLUMNS,
    # ENSURE_STATE_ROWS, INSERT_STATES; SAVE_STATES_CHECKED, SET_RESCORE_DUE
    (
        WRITER,
        "INSERT",
        "organization_state",
    ): "organization_id state_msgpack last_event_at health_version rescore_due_at"
    " events_applied_at",
    (
        WRITER,
        "UPDATE",
        "organization_state",
    ): "state_msgpack last_event_at health_version updated_at rescore_due_at events_applied_at",
    # CLAIM (LOCK_OFFSETS_AND_CLAIM_EVENT_IDS)
    (
        WRITER,
        "INSERT",
        "processed_events",
    ): "event_id organization_id occurred_at payload_digest",
    # ENSURE_OFFSET_ROWS; SAVE_OFFSETS (and LOCK_OFFSETS' FOR UPDATE); offsets reset
    (WRITER, "INSERT", "consumer_offsets"): "consumer_group topic partition next_offset",
    (WRITER, "UPDATE", "consumer_offsets"): "next_offset max_event_time updated_at",
    # UPSERT_SCORE_HISTORY: ON CONFLICT (organization_id, day), its DO UPDATE reads the
    # stored scored_at and (through EXCLUDED) the score columns; REPLAYED reads cause
    (WRITER, "INSERT", "health_score_history"): "organization_id " + _HISTORY_SCORE,
    (WRITER, "SELECT", "health_score_history"): "organization_id " + _HISTORY_SCORE + " day",
    (WRITER, "UPDATE", "health_score_history"): _HISTORY_SCORE + " recorded_at",
    # INSERT_ALERTS; the relay's MARK_ALERTS_SENT, RECORD_ALERT_FAILURE
    (WRITER, "INSERT", "alert_outbox"): "alert_id organization_id kind episode payload",
    (WRITER, "UPDATE", "alert_outbox"): "published_at publish_attempts last_error",
    # SAVE_STATES_CHECKED, INSERT_STATES, QUEUE_FOR_PROJECTOR, QUEUE_AGAIN; UPDATE for
    # PENDING_PROJECTION's FOR UPDATE OF q
    (WRITER, "INSERT", "read_model_pending"): "organization_id version",
    (WRITER, "UPDATE", "read_model_pending"): "version",
    # OWE_HEALTH_FEED (owed_since is its default); OWE_HEALTH_FEED_LATER
    (WRITER, "INSERT", "health_feed_owed"): "not_before organization_id",
    (WRITER, "UPDATE", "health_feed_owed"): "not_before",
    # INSERT_DEAD_LETTERS; RECORD_DEAD_LETTER_FAILURE
    (
        WRITER,
        "INSERT",
        "dead_letter_outbox",
    ): "source_topic source_partition source_offset record_key record_value"
    " record_timestamp_ms record_headers reason detail",
    (WRITER, "UPDATE", "dead_letter_outbox"): "publish_attempts last_error",
    # the dead-letter relay: WITHHOLD_DEAD_LETTERS
    (
        WRITER,
        "INSERT",
        "dead_letters_withheld",
    ): "id source_topic source_partition source_offset record_key record_value"
    " record_timestamp_ms record_headers reason detail rejected_at refusal",
    # store/quality.py: UPSERT_SHADOW_HEALTH, INSERT_SHADOW_ALERTS, UPSERT_CHURN_LABELS,
    # UPSERT_ALERT_OUTCOMES
    (
        WRITER,
        "INSERT",
        "shadow_health",
    ): "organization_id score_model_version health_score churn_probability risk_level"
    " components scored_at shadow_state source_version started_at",
    (
        WRITER,
        "UPDATE",
        "shadow_health",
    ): "health_score churn_probability risk_level components scored_at shadow_state"
    " source_version updated_at",
    (
        WRITER,
        "INSERT",
        "shadow_alerts",
    ): "alert_id score_model_version organization_id kind episode trigger decided_at"
    " health_score churn_probability",
    (WRITER, "INSERT", "shadow_models"): "score_model_version scoring",
    (WRITER, "INSERT", "churn_labels"): "organization_id churned_at known_until",
    (WRITER, "UPDATE", "churn_labels"): "churned_at known_until imported_at",
    (
        WRITER,
        "INSERT",
        "alert_outcomes",
    ): "alert_id organization_id kind episode raised_at outcome churned_at",
    (WRITER, "UPDATE", "alert_outcomes"): "raised_at outcome churned_at labelled_at",
    # store/quality.py SAVE_SCORE_QUALITY_SUMMARY (the outcome labeller in `serve`)
    (WRITER, "INSERT", "score_quality_summary"): _SUMMARY_COLUMNS,
    (WRITER, "UPDATE", "score_quality_summary"): _SUMMARY_COLUMNS + " computed_at",
    # store/promotion.py RECORD_MODEL; store/sql.py RECORD_REPLAY_RUN
    (WRITER, "INSERT", "score_models"): "version aggregates",
    (WRITER, "INSERT", "replay_runs"): "consumer_group silence_sweep publish_alerts",
    # app_organization_page's alerts (admins only: its policy); not the relay's
    # bookkeeping (publish_attempts, last_error)
    (
        DASHBOARD,
        "SELECT",
        "alert_outbox",
    ): "alert_id organization_id kind episode payload created_at published_at seq",
    # ACKNOWLEDGE_MILESTONE, RECORD_REWARD (acknowledged_by: the trigger's, 0075)
    (
        DASHBOARD,
        "UPDATE",
        "success_milestones",
    ): "reward_status reward_delivered_at acknowledged_at",
    # `healthscore erase`: RECORD_TOMBSTONE, FINISH_ERASURE (erased_at and erased_by are
    # the database's: now() and session_user)
    (ERASER, "INSERT", "erased_organizations"): "organization_id rows_removed",
    (ERASER, "UPDATE", "erased_organizations"): "rows_removed completed_at",
    # OWE_FEED_TOMBSTONE (the eraser), OWE_FEED_TOMBSTONES and OWE_HEALTH_FEED_LATER
    # (the projector); not_before: due again after a record that may land (0107)
    (ERASER, "INSERT", "health_feed_tombstones_owed"): "not_before organization_id",
    (WRITER, "INSERT", "health_feed_tombstones_owed"): "not_before organization_id",
    # their ON CONFLICT: owed again, owed_since moves on (0101), not_before (0107)
    (ERASER, "UPDATE", "health_feed_tombstones_owed"): "not_before owed_since",
    (WRITER, "UPDATE", "health_feed_tombstones_owed"): "not_before owed_since",
    # the WHERE clauses of DELETE_ORGANIZATION and DELETE_PROCESSED_EVENTS
    (ERASER, "SELECT", "organizations"): "id",
    # CLAIM_ORGANIZATION: waits for a writer creating the organization (0098)
    (ERASER, "INSERT", "organizations"): "id",
    (ERASER, "SELECT", "processed_events"): "organization_id",
    # LOCK_CONSUMERS: FOR UPDATE needs UPDATE on a column; it updates none
    (ERASER, "SELECT", "consumer_offsets"): "consumer_group topic partition",
    (ERASER, "UPDATE", "consumer_offsets"): "updated_at",
}

FUNCTIONS: Final = {
    # customer_health's generated columns (health_status, risk_level), computed by
    # UPSERT_CUSTOMER_HEALTH as the writer: PostgreSQL checks EXECUTE there
    f"{WRITER}: EXECUTE on function health_band(numeric)",
    f"{WRITER}: EXECUTE on function risk_level_for(numeric)",
    # the dashboard policies of 0006/0021/0030
    f"{DASHBOARD}: EXECUTE on function app_user_id()",
    f"{DASHBOARD}: EXECUTE on function app_user_role()",
    # app_organization_page (invoker) computes the trend as cs_dashboard
    f"{DASHBOARD}: EXECUTE on function score_trend(numeric,numeric)",
    # api/session.py: each request's login and logout, the connection's identity table
    f"{DASHBOARD}: EXECUTE on function app_login(text)",
    f"{DASHBOARD}: EXECUTE on function app_logout()",
    f"{DASHBOARD}: EXECUTE on function app_identity_prepare()",
    # store/read_api.py AUDIENCE, ORGANIZATION_PAGE, ORGANIZATION_HISTORY
    f"{DASHBOARD}: EXECUTE on function app_audience(text)",
    f"{DASHBOARD}: EXECUTE on function app_organization_page(text,uuid)",
    f"{DASHBOARD}: EXECUTE on function app_organization_history(text,uuid,integer)",
    # store/read_api.py READ_MODEL_FRESHNESS (0111): the dashboard's freshness; and
    # store/sql.py READ_MODEL_STALENESS (0112): the service's gauge, the same figure
    f"{DASHBOARD}: EXECUTE on function app_read_model_staleness()",
    # the API's readiness: the migrations applied (migration 0115)
    f"{DASHBOARD}: EXECUTE on function app_applied_migrations()",
    f"{WRITER}: EXECUTE on function app_read_model_staleness()",
    # api/invalidation.py: the listener's key (read_model_changes.SIGNING_KEY_RETIRES_AT)
    f"{DASHBOARD}: EXECUTE on function app_signing_key_retires_at(integer)",
    # store/erasure.py DELETE_DEAD_LETTERS (0099): the eraser reads no dead letter
    f"{ERASER}: EXECUTE on function erase_dead_letters(uuid)",
    # store/sql.py PURGE_SCORE_HISTORY (0118): HISTORY_RETENTION_DAYS, never the last 31 days
    f"{WRITER}: EXECUTE on function purge_score_history(date,uuid[])",
    # WAIT_FOR_THE_RELAYS: the relays' leader locks (migration 0116)
    f"{ERASER}: EXECUTE on function erasure_waits_for_the_relays()",
    # store/erasure.py FEED_DEBT_NOT_DUE (0107): the organization's feed debt, no other's
    f"{ERASER}: EXECUTE on function erased_feed_debt_due(uuid)",
}

# SECURITY DEFINER functions (they run as healthscore_owner) and their pinned search_path:
# pg_temp last, so that no object a session creates is found before ours
_PINNED = "search_path=pg_catalog, pg_temp"
SECURITY_DEFINER: Final = {
    "app_identity_prepare()": _PINNED,
    # `healthscore erase`: one organization's dead letters, none read by the eraser (0099)
    "erase_dead_letters(uuid)": _PINNED,
    "app_applied_migrations()": _PINNED,
    "erasure_waits_for_the_relays()": _PINNED,
    # HISTORY_RETENTION_DAYS: the owner's policies bound what it deletes (0118)
    "purge_score_history(date,uuid[])": _PINNED,
    # `healthscore erase`: the organization's feed debt, locked, no other read (0107)
    "erased_feed_debt_due(uuid)": _PINNED,
    # the read API: the read model's staleness, no organization's row (0111)
    "app_read_model_staleness()": _PINNED,
    "app_login(text)": _PINNED,
    "app_logout()": _PINNED,
    "app_signing_key_retires_at(integer)": _PINNED,
    "app_user_id()": _PINNED,
    # public after pg_catalog: only healthscore_owner creates there (0081), and its body
    # names every object schema-qualified (pg_temp, searched first for relations when
    # unlisted, never shadows one)
    "app_user_role()": "search_path=pg_catalog, public",
    "read_model_announce(text[])": _PINNED,
    "read_model_changed()": _PINNED,
    "read_model_organizations_changed()": _PINNED,
    "read_model_profiles_inserted()": _PINNED,
    "read_model_rows_inserted()": _PINNED,
    "success_milestones_acknowledged_by_from_identity()": _PINNED,
}

_ADMIN = "( SELECT (app_user_role() = 'admin'::text))"
# row-level security: every table a request-scoped role (cs_dashboard) can read, FORCE'd
ROW_SECURITY: Final = {
    "alert_outbox",
    "customer_health",
    "health_score_history",
    "organizations",
    "score_quality_summary",
    "success_milestones",
    "support_interactions",
    "user_profiles",
}
# table, policy -> (command, roles, USING, WITH CHECK)
POLICIES: Final = {
    ("alert_outbox", "alert_outbox_dashboard_admin_select"): ("SELECT", DASHBOARD, _ADMIN, None),
    ("alert_outbox", "alert_outbox_writer_all"): ("ALL", WRITER, "true", "true"),
    ("customer_health", "customer_health_dashboard_admin_select"): (
        "SELECT",
        DASHBOARD,
        _ADMIN,
        None,
    ),
    ("customer_health", "customer_health_writer_all"): ("ALL", WRITER, "true", "true"),
    ("health_score_history", "health_score_history_dashboard_admin_select"): (
        "SELECT",
        DASHBOARD,
        _ADMIN,
        None,
    ),
    ("health_score_history", "health_score_history_writer_all"): ("ALL", WRITER, "true", "true"),
    # purge_score_history() (0118, SECURITY DEFINER): only days past the last 31 (UTC)
    ("health_score_history", "health_score_history_owner_purge_delete"): (
        "DELETE",
        OWNER,
        "(day < (((now() AT TIME ZONE 'UTC'::text))::date - 31))",
        None,
    ),
    ("health_score_history", "health_score_history_owner_purge_select"): (
        "SELECT",
        OWNER,
        "(day < (((now() AT TIME ZONE 'UTC'::text))::date - 31))",
        None,
    ),
    ("organizations", "organizations_dashboard_admin_select"): ("SELECT", DASHBOARD, _ADMIN, None),
    # never an erased organization's id (0099): its statements leave those out too
    ("organizations", "organizations_writer_insert"): (
        "INSERT",
        WRITER,
        None,
        "((name IS NULL) AND (plan IS NULL) AND (NOT (EXISTS ( SELECT 1\n"
        "   FROM erased_organizations z\n"
        "  WHERE (z.organization_id = organizations.id)))))",
    ),
    ("organizations", "organizations_writer_select"): ("SELECT", WRITER, "true", None),
    ("score_quality_summary", "score_quality_summary_dashboard_admin_select"): (
        "SELECT",
        DASHBOARD,
        _ADMIN,
        None,
    ),
    ("score_quality_summary", "score_quality_summary_writer_all"): ("ALL", WRITER, "true", "true"),
    ("success_milestones", "success_milestones_dashboard_admin_select"): (
        "SELECT",
        DASHBOARD,
        _ADMIN,
        None,
    ),
    ("success_milestones", "success_milestones_dashboard_admin_update"): (
        "UPDATE",
        DASHBOARD,
        _ADMIN,
        _ADMIN,
    ),
    ("success_milestones", "success_milestones_writer_all"): ("ALL", WRITER, "true", "true"),
    ("support_interactions", "support_interactions_dashboard_admin_select"): (
        "SELECT",
        DASHBOARD,
        _ADMIN,
        None,
    ),
    ("support_interactions", "support_interactions_dashboard_support_select"): (
        "SELECT",
        DASHBOARD,
        "(( SELECT (app_user_role() = 'support'::text))"
        " AND (assigned_to = ( SELECT app_user_id() AS app_user_id)))",
        None,
    ),
    ("support_interactions", "support_interactions_writer_all"): ("ALL", WRITER, "true", "true"),
    ("user_profiles", "user_profiles_dashboard_select"): (
        "SELECT",
        DASHBOARD,
        "((id = ( SELECT app_user_id() AS app_user_id))"
        " OR ( SELECT (app_user_role() = 'admin'::text)))",
        None,
    ),
    # app_user_role() and app_login() (SECURITY DEFINER) read roles and users as the owner
    ("user_profiles", "user_profiles_owner_select"): ("SELECT", OWNER, "true", None),
    ("user_profiles", "user_profiles_writer_insert"): (
        "INSERT",
        WRITER,
        None,
        "((role = 'member'::text) AND (organization_id IS NULL) AND (email IS NULL))",
    ),
    ("user_profiles", "user_profiles_writer_select"): ("SELECT", WRITER, "true", None),
    # `healthscore erase`: DELETE_ORGANIZATION (its WHERE reads the row: SELECT too)
    ("organizations", "organizations_eraser_select"): ("SELECT", ERASER, "true", None),
    ("organizations", "organizations_eraser_delete"): ("DELETE", ERASER, "true", None),
    # CLAIM_ORGANIZATION (0098): the id only, deleted in the same transaction
    ("organizations", "organizations_eraser_insert"): (
        "INSERT",
        ERASER,
        None,
        "((name IS NULL) AND (plan IS NULL))",
    ),
}


def expected_privileges() -> set[str]:
    columns = {
        f"{role}: {privilege} ({table}.{column})"
        for (role, privilege, table), names in COLUMNS.items()
        for column in names.split()
    }
    return SCHEMA | TABLES | columns | FUNCTIONS


# --- the catalog ------------------------------------------------------------------------

# every ACL entry of a project role or PUBLIC on the schema and its objects, the
# defaults PostgreSQL applies to a NULL ACL included; an owner's entries on what it owns
# are ownership, not grants
_GRANTEES = """
    WITH grantee AS (
        SELECT 0::oid AS oid, 'PUBLIC' AS name
        UNION ALL
        SELECT oid, rolname FROM pg_roles WHERE rolname = ANY($1::text[])
    ), ours AS (
        SELECT p.oid FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                          AND d.objid = p.oid AND d.deptype = 'e')
    )
"""
PRIVILEGES_QUERY: Final = (
    _GRANTEES
    + """
    SELECT g.name || ': ' || a.privilege_type || ' on schema public'
    FROM pg_namespace n, aclexplode(n.nspacl) a JOIN grantee g ON g.oid = a.grantee
    WHERE n.nspname = 'public' AND a.grantee <> n.nspowner
    UNION ALL
    SELECT g.name || ': ' || a.privilege_type || ' on '
           || CASE c.relkind WHEN 'S' THEN 'sequence ' ELSE 'table ' END || c.relname
    FROM pg_class c,
         aclexplode(coalesce(c.relacl, acldefault(
             CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) a
    JOIN grantee g ON g.oid = a.grantee
    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
      AND a.grantee <> c.relowner
    UNION ALL
    SELECT g.name || ': ' || a.privilege_type || ' (' || c.relname || '.' || att.attname || ')'
    FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid,
         aclexplode(att.attacl) a JOIN grantee g ON g.oid = a.grantee
    WHERE c.relnamespace = 'public'::regnamespace AND NOT att.attisdropped
      AND a.grantee <> c.relowner
    UNION ALL
    SELECT g.name || ': ' || a.privilege_type || ' on function ' || p.oid::regprocedure::text
    FROM pg_proc p JOIN ours USING (oid),
         aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
    JOIN grantee g ON g.oid = a.grantee
    WHERE a.grantee <> p.proowner
    UNION ALL
    SELECT g.name || ': ' || a.privilege_type || ' on type ' || t.typname
    FROM pg_type t, aclexplode(t.typacl) a JOIN grantee g ON g.oid = a.grantee
    WHERE t.typnamespace = 'public'::regnamespace AND a.grantee <> t.typowner
    UNION ALL
    SELECT 'default privileges of ' || pg_get_userbyid(d.defaclrole) || ' ('
           || d.defaclobjtype::text || '): ' || d.defaclacl::text
    FROM pg_default_acl d
    WHERE d.defaclrole IN (SELECT oid FROM grantee)
       OR d.defaclnamespace = 'public'::regnamespace
       OR EXISTS (SELECT 1 FROM aclexplode(d.defaclacl) a JOIN grantee g ON g.oid = a.grantee)
"""
)


async def catalog_privileges(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(PRIVILEGES_QUERY, list(ROLES))
    return {row[0] for row in rows}


def _differences(name: str, expected: set[str], actual: set[str]) -> list[str]:
    return [
        f"{item}: not in the privilege map ({name}). Justify it: add it to "
        "tests/integration/test_privilege_map.py with the statement, process and role "
        "that need it; or revoke it in a migration"
        for item in sorted(actual - expected)
    ] + [
        f"{item}: in the privilege map ({name}) but not in the catalog: remove it "
        "and its justification from tests/integration/test_privilege_map.py"
        for item in sorted(expected - actual)
    ]


# --- the tests -----------------------------------------------------------------------------


async def test_every_privilege_of_the_roles_and_public_is_in_the_map(
    migrated_database: str,
) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        actual = await catalog_privileges(conn)
    finally:
        await conn.close()
    problems = _differences("privileges", expected_privileges(), actual)
    assert not problems, "\n".join(problems)


async def test_role_attributes_and_memberships_are_in_the_map(migrated_database: str) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        rows = await conn.fetch(
            """SELECT rolname,
                      concat_ws(' ',
                          CASE WHEN rolcanlogin THEN 'LOGIN' ELSE 'NOLOGIN' END,
                          CASE WHEN rolsuper THEN 'SUPERUSER' ELSE 'NOSUPERUSER' END,
                          CASE WHEN rolbypassrls THEN 'BYPASSRLS' ELSE 'NOBYPASSRLS' END,
                          CASE WHEN rolcreatedb THEN 'CREATEDB' ELSE 'NOCREATEDB' END,
                          CASE WHEN rolcreaterole THEN 'CREATEROLE' ELSE 'NOCREATEROLE' END,
                          CASE WHEN rolreplication THEN 'REPLICATION' ELSE 'NOREPLICATION' END,
                          CASE WHEN rolinherit THEN 'INHERIT' ELSE 'NOINHERIT' END,
                          CASE WHEN rolconfig IS NOT NULL
                               THEN 'SET ' || array_to_string(rolconfig, ', ') END)
                      AS attributes
               FROM pg_roles WHERE rolname = ANY($1::text[])""",
            list(ROLES),
        )
        # a project role is a member of no role, and no role of the project or predefined
        # role (pg_read_all_data, ...) is given to one: its logins are the only members
        memberships = await conn.fetch(
            """SELECT pg_get_userbyid(m.member) || ' is a member of '
                      || pg_get_userbyid(m.roleid)
                      || CASE WHEN m.admin_option THEN ' WITH ADMIN OPTION' ELSE '' END
               FROM pg_auth_members m
               JOIN pg_roles r ON r.oid = m.roleid
               JOIN pg_roles u ON u.oid = m.member
               WHERE u.rolname = ANY($1::text[])
                  OR (r.rolname = ANY($1::text[]) AND (m.admin_option OR u.rolsuper))""",
            list(ROLES),
        )
    finally:
        await conn.close()
    actual = {f"role {r['rolname']}: {r['attributes']}" for r in rows}
    expected = {f"role {role}: {attributes}" for role, attributes in ROLE_ATTRIBUTES.items()}
    problems = _differences("role attributes", expected, actual)
    problems += _differences("memberships", set(), {r[0] for r in memberships})
    assert not problems, "\n".join(problems)


async def test_policies_and_row_level_security_are_in_the_map(migrated_database: str) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        policies = await conn.fetch(
            """SELECT tablename, policyname, cmd, array_to_string(roles, ',') AS roles,
                      permissive, qual, with_check
               FROM pg_policies WHERE schemaname = 'public'"""
        )
        tables = await conn.fetch(
            """SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                      has_table_privilege($1, c.oid, 'SELECT')
                      OR has_any_column_privilege($1, c.oid, 'SELECT') AS dashboard_reads
               FROM pg_class c
               WHERE c.relnamespace = 'public'::regnamespace
                 AND c.relkind IN ('r', 'p', 'v', 'm')""",
            DASHBOARD,
        )
    finally:
        await conn.close()

    def policy(p: asyncpg.Record) -> str:
        assert p["permissive"] == "PERMISSIVE", p  # no restrictive policy is in the map
        return (
            f"policy {p['policyname']} on {p['tablename']}: {p['cmd']} to {p['roles']}"
            f" USING {p['qual']} WITH CHECK {p['with_check']}"
        )

    expected = {
        f"policy {name} on {table}: {cmd} to {roles} USING {using} WITH CHECK {check}"
        for (table, name), (cmd, roles, using, check) in POLICIES.items()
    }
    problems = _differences("policies", expected, {policy(p) for p in policies})
    forced = {t["relname"] for t in tables if t["relrowsecurity"] and t["relforcerowsecurity"]}
    problems += _differences(
        "row-level security",
        {f"{t}: row-level security, forced" for t in ROW_SECURITY},
        {f"{t}: row-level security, forced" for t in forced},
    )
    # the request-scoped role reads no table that row-level security does not guard
    problems += [
        f"{t['relname']}: {DASHBOARD} can read it and it has no forced row-level security"
        for t in tables
        if t["dashboard_reads"] and t["relname"] not in forced
    ]
    assert not problems, "\n".join(problems)


async def test_security_definer_functions_pin_their_search_path(migrated_database: str) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        rows = await conn.fetch(
            """SELECT p.oid::regprocedure::text AS function,
                      (SELECT s FROM unnest(p.proconfig) s WHERE s LIKE 'search_path=%') AS path
               FROM pg_proc p
               WHERE p.pronamespace = 'public'::regnamespace AND p.prosecdef"""
        )
    finally:
        await conn.close()
    actual = {f"SECURITY DEFINER {r['function']}: {r['path']}" for r in rows}
    expected = {f"SECURITY DEFINER {f}: {path}" for f, path in SECURITY_DEFINER.items()}
    problems = _differences("SECURITY DEFINER functions", expected, actual)
    assert not problems, "\n".join(problems)


# --- advisory locks (migration 0109) -----------------------------------------------------

# the lock-taking functions, and which project role may execute each (PUBLIC: none)
ADVISORY_LOCKS: Final = {
    # TRY_LEADER_LOCK, TRY_SHARD_LOCK, PENDING_PROJECTION's shard lock (store/sql.py)
    "pg_try_advisory_xact_lock(bigint)": {WRITER},
    "pg_try_advisory_xact_lock(integer,integer)": {WRITER},
    # the migration lock (store/migrate.py), for a migration login in healthscore_owner,
    # and the service's login (`serve` checks the migrations under it)
    "pg_try_advisory_lock(bigint)": {OWNER, WRITER},
    "pg_advisory_lock(bigint)": {OWNER, WRITER},
    # erasure_waits_for_the_relays() (SECURITY DEFINER, the owner's): the relays' keys
    "pg_advisory_xact_lock(bigint)": {OWNER},
    **{
        f"{name}({args})": set()
        for name in (
            "pg_advisory_lock_shared",
            "pg_try_advisory_lock_shared",
            "pg_advisory_xact_lock_shared",
            "pg_try_advisory_xact_lock_shared",
        )
        for args in ("bigint", "integer,integer")
    },
    "pg_advisory_lock(integer,integer)": set(),
    "pg_advisory_xact_lock(integer,integer)": set(),
    "pg_try_advisory_lock(integer,integer)": set(),
}


async def test_only_the_services_roles_may_take_advisory_locks(migrated_database: str) -> None:
    """Any login could take any advisory lock: a dashboard login holding the service's
    leader and shard keys stopped every background loop, silently (review 32b, F1)."""
    conn = await asyncpg.connect(migrated_database)
    try:
        rows = await conn.fetch(
            """SELECT p.oid::regprocedure::text AS fn,
                      coalesce(array_agg(g.rolname) FILTER (WHERE g.rolname IS NOT NULL),
                               '{}') AS roles,
                      bool_or(a.grantee = 0) AS public
               FROM pg_proc p
               LEFT JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner)))
                    a ON true
               LEFT JOIN pg_roles g ON g.oid = a.grantee AND g.rolname = ANY($1::text[])
               WHERE p.pronamespace = 'pg_catalog'::regnamespace
                 AND p.proname LIKE 'pg%advisory%lock%' AND p.proname NOT LIKE '%unlock%'
               GROUP BY 1""",
            list(ROLES),
        )
    finally:
        await conn.close()
    found = {row["fn"].replace(", ", ","): (set(row["roles"]), row["public"]) for row in rows}
    assert set(found) == set(ADVISORY_LOCKS)
    assert {fn: roles for fn, (roles, _public) in found.items()} == ADVISORY_LOCKS
    assert not any(public for _roles, public in found.values())


async def test_a_dashboard_login_cannot_hold_the_services_locks(
    migrated_database: str, pg_admin_url: str
) -> None:
    """The review's reproduction: a person's cs_dashboard login takes the alert relay's
    leader key; the service's own statement then got no lock, for as long as that
    session lived. Refused now; the writer still takes it."""
    import uuid

    from healthscore.store import locks, sql
    from healthscore.store.db import create_pool
    from tests.utils.api import with_user

    analyst = f"t_analyst_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f"CREATE ROLE {analyst} LOGIN IN ROLE cs_dashboard")
        person = await asyncpg.connect(with_user(migrated_database, analyst))
        try:
            for statement in (
                "SELECT pg_advisory_lock($1::bigint)",
                "SELECT pg_try_advisory_lock($1::bigint)",
                "SELECT pg_advisory_lock_shared($1::bigint)",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await person.fetchval(statement, locks.RELAY)
            assert await person.fetchval("SELECT pg_advisory_unlock_all()") is None
        finally:
            await person.close()
        pool = await create_pool(migrated_database, WRITER, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn, conn.transaction():
                assert await conn.fetchval(sql.TRY_LEADER_LOCK, locks.RELAY) is True
        finally:
            await pool.close()
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {analyst}")
        await admin.close()


def test_the_erasure_waits_for_the_relays_keys() -> None:
    """Migration 0116 writes the relays' leader keys as numbers: they are store/locks.py's."""
    from pathlib import Path

    from healthscore.store import locks
    from healthscore.store.migrate import migrations_path

    (migration,) = Path(migrations_path()).glob("0116_*.sql")
    keys = [int(k) for k in re.findall(r"pg_advisory_xact_lock\((\d+)\)", migration.read_text())]
    assert keys == [locks.RELAY, locks.DEAD_LETTER_RELAY]
    # 0117 replaced it: the dead-letter relay's first, so alerts never wait behind it
    (migration,) = Path(migrations_path()).glob("0117_*.sql")
    keys = [int(k) for k in re.findall(r"pg_advisory_xact_lock\((\d+)\)", migration.read_text())]
    assert keys == [locks.DEAD_LETTER_RELAY, locks.RELAY]
