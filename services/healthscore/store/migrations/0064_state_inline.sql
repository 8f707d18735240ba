-- A state document (1.5-4 KB of JSON) is rewritten with most batches. Above the
-- default toast target (about 2 KB) each save compressed it with pglz and each
-- read decompressed it; kept inline and uncompressed up to a page, a save is a
-- plain tuple write.
ALTER TABLE organization_state SET (toast_tuple_target = 8160);
