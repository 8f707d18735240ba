-- Each role executes the functions its statements call, and PUBLIC none of ours.
--
-- Found by the privilege audit of the migrated catalog (privilege21): EXECUTE that no
-- code path uses.
--
--   * PUBLIC (any login allowed to connect to the database, of this project or not)
--     kept the EXECUTE a new function gets by default on set_updated_at() (0002),
--     health_band(), risk_level_for(), score_trend() (0003) and hmac_sha256() (0020);
--     every other function of ours revokes it.
--   * healthscore_writer was granted app_user_id(), app_user_role() (0006, 0020),
--     score_trend() and set_updated_at() (0006): its policies are `true`, no statement
--     of the service (store/sql.py, quality, promotion, replay, the relays) calls any
--     of them, and a trigger runs its function without an EXECUTE check on whoever
--     fires it (the read-model triggers' functions are granted to nobody).
--   * cs_dashboard was granted health_band() and risk_level_for() (0006): they compute
--     customer_health's stored generated columns, which only the writer's inserts and
--     updates compute; the read API reads health_status and risk_level as stored.
--
-- Kept, each for its code path: the writer's health_band() and risk_level_for()
-- (UPSERT_CUSTOMER_HEALTH computes the generated columns as the writer: PostgreSQL
-- checks EXECUTE there); the dashboard's score_trend() (app_organization_page, an
-- invoker function, calls it as cs_dashboard), app_user_id() and app_user_role()
-- (its policies); hmac_sha256() for its owner (app_login, app_mint_token and
-- app_signing_keys.read_model_channel, all healthscore_owner's).
-- tests/integration/test_rls.py ("functions") shows each role refused, and
-- tests/integration/test_privilege_map.py pins the whole map.

REVOKE EXECUTE ON FUNCTION
    set_updated_at(), health_band(numeric), risk_level_for(numeric),
    score_trend(numeric, numeric), hmac_sha256(bytea, bytea)
    FROM PUBLIC;

REVOKE EXECUTE ON FUNCTION
    app_user_id(), app_user_role(), score_trend(numeric, numeric), set_updated_at()
    FROM healthscore_writer;

REVOKE EXECUTE ON FUNCTION health_band(numeric), risk_level_for(numeric) FROM cs_dashboard;
