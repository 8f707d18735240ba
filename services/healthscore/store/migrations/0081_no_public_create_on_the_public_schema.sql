-- PUBLIC may not create objects in the public schema, whatever the database had.
--
-- PostgreSQL 15 stopped granting CREATE on the public schema to PUBLIC, but
-- PostgreSQL 14 and earlier grant it, and a database upgraded from one (pg_upgrade,
-- or a dump restored with its privileges) keeps the grant. There any login allowed to
-- connect, of this project or not, could create tables and functions next to ours:
-- a function in public with argument types closer to a call than the built-in one
-- outranks it, and the read API's sessions search public (pg_trgm lives there), so
-- the planted function would run as cs_dashboard under the logged-in user's identity,
-- e.g. sending what an admin sees to a channel its author listens on. No role of the
-- project needs CREATE there but healthscore_owner (0001), which keeps it.
-- On a database that never had the grant this changes nothing.
-- tests/integration/test_migrations.py (test_no_login_creates_objects_in_the_public_schema)
-- starts from a database with the old grant.

REVOKE CREATE ON SCHEMA public FROM PUBLIC;
