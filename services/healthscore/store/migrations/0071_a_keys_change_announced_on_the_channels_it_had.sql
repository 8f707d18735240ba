-- A change to app_signing_keys is announced on the channels the keys had before it, too.
--
-- Migration 0070 sends each announcement on the channel of every key in use or retired
-- within the last day, read when the statement has run: a statement that takes a key's
-- channel away announced itself to everybody but that key's holder. Re-registering a key
-- id with another secret (deploy/compose/init/20-api-login.sql, "re-registers (or
-- rotates) the key"), deleting the key, retiring it with a time over a day back or
-- truncating the table: the running API that holds it heard nothing, neither that nor
-- any change after it, while its listener's round trips kept its lease, so its cache
-- served every kept answer unannounced until it restarted (its misses failing app_login).
--
-- The same function, fired BEFORE the statement, reads the channels the keys have
-- before it; the AFTER trigger of migration 0050 still reaches the keys it leaves.
-- PostgreSQL sends one notification per channel and payload of a transaction, so a
-- channel in both sets hears the change once.

CREATE TRIGGER app_signing_keys_read_model_changing
    BEFORE UPDATE OR DELETE OR TRUNCATE ON app_signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION read_model_changed();
COMMENT ON TRIGGER app_signing_keys_read_model_changing ON app_signing_keys IS
    'Announces the change (read_model_changed) on the channels of the keys before the statement, so the holder of a key whose channel it moves or ends (another secret, deleted, retired over a day back) hears it; app_signing_keys_read_model_changed announces it on those after.';
