-- Organizations found by name (the dashboard's search): customer-success staff know an
-- organization by its name, not by its id. Each word typed is the start of a word of the
-- name ('bloom vow' finds "Bloom & Vow Weddings"), read from the name's words (the
-- built-in 'simple' configuration: no stemming, no stop words, any language). Partial:
-- the service's placeholder rows (id only, named later by the product) cost the index
-- nothing. An index on the expression, not a stored column: adding a column would
-- rewrite the table under an exclusive lock, and the writer inserts organizations.
CREATE INDEX organizations_name_words_idx ON organizations
    USING gin (to_tsvector('simple'::regconfig, name)) WHERE name IS NOT NULL;
COMMENT ON INDEX organizations_name_words_idx IS
    'Serves: the organization list''s name search (WHERE name IS NOT NULL AND to_tsvector(''simple'', name) @@ <the words as prefixes>).';

-- Under row-level security a condition that is not LEAKPROOF is evaluated after the
-- policies and is never an index condition (migration 0030): the search would read
-- every organization's name. The text-search match is pure and raises nothing; the
-- parsing of a name raises (or sends a NOTICE) only by its length (a name over 1 MB of
-- words, a word over 2 KB), never by what it says, so both are marked, as 0030 marks the
-- filters' functions (a superuser only; elsewhere the search is correct, only slower).
-- What the marks allow besides, as 0030's do for the subject search: the policy is a
-- per-row filter, so a search that hidden names match reads them before the policy
-- drops them, and its time says, coarsely, how common a word is among names the caller
-- cannot see; and the mark is the function's, for any configuration argument (no
-- statement here passes one from a column).
DO $leakproof$
DECLARE
    fn regprocedure;
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        FOREACH fn IN ARRAY ARRAY[
            'pg_catalog.to_tsvector(regconfig, text)',
            'pg_catalog.ts_match_vq(tsvector, tsquery)'
        ]::regprocedure[]
        LOOP
            EXECUTE format('ALTER FUNCTION %s LEAKPROOF', fn);
        END LOOP;
    ELSE
        RAISE NOTICE 'not a superuser: to_tsvector and ts_match_vq stay non-LEAKPROOF, so '
            'the name search reads every organization under row-level security';
    END IF;
END
$leakproof$;
