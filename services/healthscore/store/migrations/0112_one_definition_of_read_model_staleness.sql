-- One definition of the read model's staleness (the age of the oldest change not yet
-- projected): migration 0111 wrote it for the read API as app_read_model_staleness(),
-- beside the service's own READ_MODEL_STALENESS statement (its gauge, readiness, the
-- benchmark) saying the same. The service now calls the function too, so the
-- dashboard's "behind" and the alert's cannot drift apart.
GRANT EXECUTE ON FUNCTION app_read_model_staleness() TO healthscore_writer;
