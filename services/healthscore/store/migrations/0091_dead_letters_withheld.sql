-- Dead letters their topic refuses for their content alone are kept here.
--
-- The dead-letter relay publishes each source topic's dead letters in order and keeps a
-- refused one in dead_letter_outbox until the topic takes it. A dead letter the topic
-- will never take (a value its enforced schema refuses, whatever else the broker
-- refuses one record for) then held every later dead letter of its topic for good.
-- The relay now tells the two apart by sending a stand-in (the rejection's headers and
-- a JSON description, without the record's bytes): taken, the refusal was the record's
-- alone, and the record as it came moves here, in the transaction that deletes it from
-- the outbox; refused too, the topic refuses its dead letters and they all wait.

CREATE TABLE dead_letters_withheld (
    id                  bigint      PRIMARY KEY,
    source_topic        text        NOT NULL,
    source_partition    integer     NOT NULL,
    source_offset       bigint      NOT NULL,
    record_key          bytea       NULL,
    record_value        bytea       NULL,
    record_timestamp_ms bigint      NULL,
    record_headers      bytea       NOT NULL,
    reason              text        NOT NULL,
    detail              text        NOT NULL,
    rejected_at         timestamptz NOT NULL,
    withheld_at         timestamptz NOT NULL DEFAULT now(),
    refusal             text        NOT NULL,
    CONSTRAINT dead_letters_withheld_source_key
        UNIQUE (source_topic, source_partition, source_offset)
);
ALTER TABLE dead_letters_withheld OWNER TO healthscore_owner;
COMMENT ON TABLE dead_letters_withheld IS
    'Dead letters their dead-letter topic refused for their content alone (it took a stand-in without the record''s bytes, headed x-value-withheld): the record as it came, moved from dead_letter_outbox by the dead-letter relay.';
COMMENT ON COLUMN dead_letters_withheld.id IS 'The dead letter''s id in dead_letter_outbox (its order of rejection).';
COMMENT ON COLUMN dead_letters_withheld.source_topic IS 'Topic of the rejected record.';
COMMENT ON COLUMN dead_letters_withheld.source_partition IS 'Partition of the rejected record.';
COMMENT ON COLUMN dead_letters_withheld.source_offset IS 'Offset of the rejected record.';
COMMENT ON COLUMN dead_letters_withheld.record_key IS 'The record''s key as it came (NULL: none).';
COMMENT ON COLUMN dead_letters_withheld.record_value IS 'The record''s value as it came (NULL: none).';
COMMENT ON COLUMN dead_letters_withheld.record_timestamp_ms IS 'The record''s Kafka timestamp (NULL: none).';
COMMENT ON COLUMN dead_letters_withheld.record_headers IS 'The producer''s headers as they came: a MessagePack array of [name, value or nil] pairs.';
COMMENT ON COLUMN dead_letters_withheld.reason IS 'The rejection''s reason code (x-error-reason).';
COMMENT ON COLUMN dead_letters_withheld.detail IS 'The rejection''s detail (x-error-detail).';
COMMENT ON COLUMN dead_letters_withheld.rejected_at IS 'When the batch rejected it (x-rejected-at).';
COMMENT ON COLUMN dead_letters_withheld.withheld_at IS 'When the relay published its stand-in instead.';
COMMENT ON COLUMN dead_letters_withheld.refusal IS 'What the dead-letter topic answered the dead letter with.';

GRANT SELECT ON dead_letters_withheld TO healthscore_writer;
GRANT INSERT (
    id, source_topic, source_partition, source_offset, record_key, record_value,
    record_timestamp_ms, record_headers, reason, detail, rejected_at, refusal
) ON dead_letters_withheld TO healthscore_writer;
