-- CLAIM_EVENT_IDS also writes the payload digest (0016); READ_EVENT_DIGESTS reads
-- it through the SELECT granted in 0022.
GRANT INSERT (payload_digest) ON processed_events TO healthscore_writer;
