-- A consumer holds the states of the organizations it owns between batches and
-- saves each checked against the version it was computed from
-- (SAVE_STATES_CHECKED). A new organization's first state is inserted whole
-- (INSERT_STATES) instead of an empty row locked and then updated: one write
-- instead of two.
GRANT INSERT (last_event_at, rescore_due_at, health_version)
    ON organization_state TO healthscore_writer;
