-- An interaction's subject may be up to 1,500 characters once in NFC.
--
-- The contract bounds a subject at 500 characters as sent, and the service stores it
-- in Unicode NFC (0076). NFC lengthens some text: a Hebrew presentation form such as
-- U+FB2C is three code points in NFC, U+0958 (DEVANAGARI LETTER QA) two. A valid
-- subject of 500 such characters was refused by the 500-character check here, so its
-- record was dead-lettered as `unprocessable` (a database error its producer can do
-- nothing about). Three times the contract's bound is NFC's largest expansion (a
-- stability guarantee of Unicode, UAX #15), so every valid subject fits.

ALTER TABLE support_interactions
    DROP CONSTRAINT support_interactions_subject_check,
    ADD CONSTRAINT support_interactions_subject_check CHECK (char_length(subject) <= 1500);

COMMENT ON COLUMN support_interactions.subject IS
    'Subject as sent (<= 500 chars) in Unicode NFC (canonically equivalent: the same text to a reader; up to 1,500 chars, as NFC lengthens some text), trigram-indexed for search.';
