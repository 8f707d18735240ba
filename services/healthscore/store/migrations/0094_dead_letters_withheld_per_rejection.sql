-- A dead letter withheld is kept whatever was withheld at its coordinates before.
--
-- dead_letters_withheld (migration 0091) was unique on the record's source coordinates,
-- and the dead-letter relay moved a withheld dead letter with ON CONFLICT DO NOTHING: the
-- second record withheld at the coordinates of an earlier one was deleted from
-- dead_letter_outbox and kept nowhere. Coordinates repeat with other bytes when an input
-- topic is recreated (its offsets start at 0 again; docs/operations.md, "Recovering from
-- a recreated topic"), so the record was lost while its stand-in said it was kept. Each
-- withheld dead letter is now a row of its own (its id, from dead_letter_outbox, stays
-- the key); a record rejected again at the same coordinates (a replay) is kept again.
-- The coordinates keep an index: the runbook and `healthscore dead-letters` look rows up
-- by them.

ALTER TABLE dead_letters_withheld DROP CONSTRAINT dead_letters_withheld_source_key;

CREATE INDEX dead_letters_withheld_source_idx
    ON dead_letters_withheld (source_topic, source_partition, source_offset);
COMMENT ON INDEX dead_letters_withheld_source_idx IS
    'Serves: looking a withheld record up by the coordinates its stand-in names (x-source-*).';
