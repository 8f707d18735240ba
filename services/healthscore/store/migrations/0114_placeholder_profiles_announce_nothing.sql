-- A new support assignee's placeholder profile changes what no cached answer says.
--
-- The service inserts a placeholder user_profiles row (id only: role member, no email,
-- name or organization) for each assignee it first sees in events, in the batch that
-- stores the interaction naming them. Each such insert announced the whole table, and
-- the read API, for which a change to user_profiles may change who sees what, dropped
-- every kept answer in every process (review 32b): a cliff wherever new assignees are
-- common. A member without email, name or organization sees nothing and is shown
-- nowhere (the interaction that names them is announced by its own table), so such
-- rows announce nothing now; any other profile inserted still announces the table.

CREATE FUNCTION read_model_profiles_inserted() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (
        SELECT FROM inserted
        WHERE NOT (role = 'member' AND email IS NULL AND full_name IS NULL
                   AND organization_id IS NULL)
    ) THEN
        PERFORM public.read_model_announce(ARRAY[TG_TABLE_NAME::text]);
    END IF;
    RETURN NULL;
END
$$;
ALTER FUNCTION read_model_profiles_inserted() OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION read_model_profiles_inserted() FROM PUBLIC;
COMMENT ON FUNCTION read_model_profiles_inserted() IS
    'Statement-level AFTER INSERT trigger on user_profiles (REFERENCING NEW TABLE AS inserted): announces the table (read_model_announce) when the statement inserted a profile other than a placeholder (a member without email, name or organization).';

DROP TRIGGER user_profiles_read_model_rows_inserted ON user_profiles;
CREATE TRIGGER user_profiles_read_model_rows_inserted AFTER INSERT ON user_profiles
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION read_model_profiles_inserted();
