"""PostgreSQL access: named SQL, `$n` parameters, set-based batch writes."""
