-- Interaction subjects are stored in Unicode normalization form NFC.
--
-- A subject search (`q`) compares trigrams of characters, and one text has several
-- spellings in Unicode: "café" typed on one keyboard is four code points, pasted from
-- another source five (e + a combining accent, NFD, as macOS file names and some
-- ticketing systems send it). A search in one form found nothing stored in the other.
-- From this release the scoring core stores each subject in NFC and the API searches
-- with `q` in NFC; this migration brings the subjects stored before into the same form
-- (the same text to a reader: canonical equivalence changes no character anyone sees).

DO $$
BEGIN
    IF current_setting('server_encoding') <> 'UTF8' THEN
        RAISE NOTICE 'server encoding is %, not UTF8: subjects left as stored',
            current_setting('server_encoding');
        RETURN;
    END IF;
    UPDATE support_interactions
    SET subject = normalize(subject, NFC)
    WHERE subject IS NOT NULL AND subject IS NOT NFC NORMALIZED;
END
$$;

COMMENT ON COLUMN support_interactions.subject IS
    'Subject as sent (<= 500 chars) in Unicode NFC (canonically equivalent: the same text to a reader), trigram-indexed for search.';
