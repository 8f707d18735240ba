-- Erasing an organization (`healthscore erase`): offboarding, or an erasure request
-- under GDPR art. 17.
--
-- Nothing removed an organization's data, and hand-written deletes were undone by the
-- organization's next event (a consumer holding its state saves it back; a batch
-- creates the rows of an organization it does not know) or by `healthscore replay`.
-- erased_organizations is the tombstone that stops that, and the audit trail: which id,
-- when, by which login, how many rows; never anything of the organization but its id.
-- Batches read it in the statement that claims their event ids (no statement more),
-- and skip the events of an erased organization; the statements that create an
-- organization's first rows leave erased ones out.
--
-- The erasure runs as healthscore_eraser (NOLOGIN; an operator's login is made a
-- member for the task): it deletes the organizations row, and ON DELETE CASCADE
-- (which bypasses row-level security and needs no grant on the referencing tables)
-- removes the state, score history, interactions, milestones, read model row, alert
-- outbox, alert outcomes, labels, shadow rows and queue entries; processed event ids
-- and dead letters (no foreign key) it deletes itself. It reads none of the read
-- model: row-level security for readers is unchanged.

DO $roles$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_catalog.pg_roles
        WHERE rolname = 'healthscore_eraser' AND (rolsuper OR rolbypassrls)
    ) THEN
        RAISE EXCEPTION 'role healthscore_eraser exists as a superuser or with BYPASSRLS; refusing to use it';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'healthscore_eraser') THEN
        BEGIN
            CREATE ROLE healthscore_eraser NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created meanwhile by a runner on another database
        END;
    END IF;
END
$roles$;

COMMENT ON ROLE healthscore_eraser IS
    'Runs `healthscore erase` (SET ROLE from a member login): deletes organizations (their data cascades), records the tombstone; reads no read-model row.';

GRANT USAGE ON SCHEMA public TO healthscore_eraser;

CREATE TABLE erased_organizations (
    organization_id uuid        PRIMARY KEY,
    erased_at       timestamptz NOT NULL DEFAULT now(),
    erased_by       text        NOT NULL DEFAULT session_user,
    rows_removed    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT erased_organizations_rows_removed_object
        CHECK (jsonb_typeof(rows_removed) = 'object')
);
ALTER TABLE erased_organizations OWNER TO healthscore_owner;
COMMENT ON TABLE erased_organizations IS
    'Erased organizations (`healthscore erase`): the tombstone every writer honours (their events are skipped, their rows never created again) and the audit trail. Holds no personal data: the id, when, which login, row counts.';
COMMENT ON COLUMN erased_organizations.organization_id IS 'The erased organization.';
COMMENT ON COLUMN erased_organizations.erased_at IS 'When the first erasure of it committed.';
COMMENT ON COLUMN erased_organizations.erased_by IS
    'The login (session_user) that ran it: set by the database, not by the command.';
COMMENT ON COLUMN erased_organizations.rows_removed IS
    'Rows the first erasure removed, per table (the counts only).';

-- the eraser: the tombstone, and the audit it reads back (`healthscore erase --list`)
GRANT SELECT, INSERT (organization_id, rows_removed) ON erased_organizations TO healthscore_eraser;
GRANT UPDATE (rows_removed) ON erased_organizations TO healthscore_eraser;
-- the writer: LOCK_OFFSETS_AND_CLAIM_EVENT_IDS, INSERT_STATES, ENSURE_ORGANIZATIONS,
-- ENSURE_STATE_ROWS and ERASED_AMONG read it
GRANT SELECT ON erased_organizations TO healthscore_writer;

-- DELETE_ORGANIZATION (WHERE id = $1 needs SELECT on id, and a SELECT policy too)
GRANT SELECT (id), DELETE ON organizations TO healthscore_eraser;
CREATE POLICY organizations_eraser_select ON organizations
    FOR SELECT TO healthscore_eraser USING (true);
CREATE POLICY organizations_eraser_delete ON organizations
    FOR DELETE TO healthscore_eraser USING (true);

-- LOCK_CONSUMERS: FOR UPDATE needs UPDATE on some column; the eraser changes none
GRANT SELECT (consumer_group, topic, partition), UPDATE (updated_at)
    ON consumer_offsets TO healthscore_eraser;

-- DELETE_PROCESSED_EVENTS, DELETE_DEAD_LETTERS, DELETE_DEAD_LETTERS_WITHHELD
GRANT SELECT (organization_id), DELETE ON processed_events TO healthscore_eraser;
GRANT SELECT (record_key, record_value), DELETE ON dead_letter_outbox TO healthscore_eraser;
GRANT SELECT (record_key, record_value), DELETE ON dead_letters_withheld TO healthscore_eraser;
