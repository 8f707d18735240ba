-- Dead letters leave through an outbox, as alerts do.
--
-- A batch published its dead letters to `<topic>.dlq` inside its transaction and
-- waited for the broker's acks before committing, so that none could be lost. A
-- dead-letter topic refusing them (an ACL, a schema the broker enforces, a topic
-- deleted with auto-creation off) then held the whole batch, and with it every valid
-- record of its partitions, for as long as it refused; a batch retried after its dead
-- letters went out sent them again; and the acks were waited for with the batch's
-- row locks held. The contract says a bad record delays nothing valid beside it.
--
-- Now a batch writes its dead letters here, in its own transaction with its offsets
-- (one row per rejected source record: a batch redone writes none twice), and a relay
-- publishes them in order and deletes what the broker acknowledged. The row keeps the
-- source record as it came (key, value, timestamp, the producer's headers) and the
-- rejection; a dead letter the topic refuses stays here with its error, the batches
-- go on.

CREATE TABLE dead_letter_outbox (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_topic        text        NOT NULL,
    source_partition    integer     NOT NULL,
    source_offset       bigint      NOT NULL,
    record_key          bytea       NULL,
    record_value        bytea       NULL,
    record_timestamp_ms bigint      NULL,
    record_headers      bytea       NOT NULL,
    reason              text        NOT NULL,
    detail              text        NOT NULL,
    rejected_at         timestamptz NOT NULL DEFAULT now(),
    publish_attempts    integer     NOT NULL DEFAULT 0,
    last_error          text        NULL,
    CONSTRAINT dead_letter_outbox_source_key
        UNIQUE (source_topic, source_partition, source_offset),
    CONSTRAINT dead_letter_outbox_publish_attempts_check CHECK (publish_attempts >= 0)
);
ALTER TABLE dead_letter_outbox OWNER TO healthscore_owner;
COMMENT ON TABLE dead_letter_outbox IS
    'Dead letters written in the batch transaction that rejected their source records, published to <topic>.dlq by the dead-letter relay (in id order) and deleted once the broker acknowledged them.';
COMMENT ON COLUMN dead_letter_outbox.id IS 'Order of rejection: the relay publishes in this order.';
COMMENT ON COLUMN dead_letter_outbox.source_topic IS 'Topic of the rejected record (the dead letter goes to this name + DLQ_SUFFIX).';
COMMENT ON COLUMN dead_letter_outbox.source_partition IS 'Partition of the rejected record.';
COMMENT ON COLUMN dead_letter_outbox.source_offset IS 'Offset of the rejected record (the first of a stand-in''s offsets).';
COMMENT ON COLUMN dead_letter_outbox.record_key IS 'The record''s key as it came (NULL: none).';
COMMENT ON COLUMN dead_letter_outbox.record_value IS 'The record''s value as it came (NULL: none).';
COMMENT ON COLUMN dead_letter_outbox.record_timestamp_ms IS 'The record''s Kafka timestamp (NULL: none).';
COMMENT ON COLUMN dead_letter_outbox.record_headers IS 'The producer''s headers as they came: a MessagePack array of [name, value or nil] pairs.';
COMMENT ON COLUMN dead_letter_outbox.reason IS 'The rejection''s reason code (x-error-reason).';
COMMENT ON COLUMN dead_letter_outbox.detail IS 'The rejection''s detail (x-error-detail).';
COMMENT ON COLUMN dead_letter_outbox.rejected_at IS 'When the batch rejected it (x-rejected-at).';
COMMENT ON COLUMN dead_letter_outbox.publish_attempts IS 'Failed publish attempts so far.';
COMMENT ON COLUMN dead_letter_outbox.last_error IS 'Error of the last failed publish attempt (the topic, the record and the broker''s error).';

GRANT SELECT, DELETE ON dead_letter_outbox TO healthscore_writer;
GRANT INSERT (
    source_topic, source_partition, source_offset, record_key, record_value,
    record_timestamp_ms, record_headers, reason, detail
) ON dead_letter_outbox TO healthscore_writer;
GRANT UPDATE (publish_attempts, last_error) ON dead_letter_outbox TO healthscore_writer;
