-- organization_state.state: json (verbatim text) instead of jsonb.
--
-- The service is the only reader and writer of the state document and never
-- queries inside it; it sends and reads it as text (msgspec). jsonb made
-- PostgreSQL parse a ~1.7 KB document into its binary form on every write and
-- print it back to text on every read, once per organization per batch (the
-- state write and load were ~44 and ~35 us per organization at 100k
-- organizations). json only checks the syntax and keeps the text, and the
-- ->> operators still work for ad-hoc inspection.
ALTER TABLE organization_state ALTER COLUMN state TYPE json USING state::json;
COMMENT ON COLUMN organization_state.state IS
    'Serialized aggregates (healthscore.scoring.state, msgspec JSON text): windows, decayed activity, counters, last-seen times.';

