-- The dead-letter relay pages each source topic's dead letters apart.
--
-- It read the first rows of dead_letter_outbox in id order, whatever their topic, and
-- published each topic's share. A dead-letter topic that refused its dead letters kept
-- them there, and once a page's worth of them waited, every page was theirs alone:
-- the other topics' dead letters, rejected after them, were never read again until the
-- refusing topic took its own. Each topic's oldest rows are now read apart (a loose
-- scan of this index over the topics, then each topic's first page), so a refusing
-- topic holds back only its own.

CREATE INDEX dead_letter_outbox_topic_order ON dead_letter_outbox (source_topic, id);
COMMENT ON INDEX dead_letter_outbox_topic_order IS
    'The dead-letter relay''s pages: the source topics (a loose scan) and each topic''s oldest dead letters, so a refused topic holds back only its own.';
