-- An owed health-feed tombstone owed again while it is being published stays owed.
--
-- The projector (or `healthscore erase`) publishes an owed tombstone, then deletes the
-- entry by organization id. A late feed record of the organization landing after that
-- tombstone, whose tombstone its replica could not publish again, owed it anew in
-- between: ON CONFLICT DO NOTHING kept the old entry, and the delete took the newer
-- debt with it (the feed ended on the late score). Owing it again now moves owed_since
-- on, and a publisher deletes only the entry it read (organization_id and owed_since).

-- OWE_FEED_TOMBSTONES (the projector) and OWE_FEED_TOMBSTONE (the eraser): ON CONFLICT
-- DO UPDATE SET owed_since
GRANT UPDATE (owed_since) ON health_feed_tombstones_owed TO healthscore_writer;
GRANT UPDATE (owed_since) ON health_feed_tombstones_owed TO healthscore_eraser;
