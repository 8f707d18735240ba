"""Write a libpq service file from MIGRATION_DATABASE_URL (the migrate Job's first step).

psql takes a postgresql:// URL only on its command line, where the admin password
would show in every process listing of the node (and in whatever collects them).
This writes the URL's parts as a service `[admin]` to the file named by the only
argument, for psql to read through PGSERVICEFILE and PGSERVICE=admin. A URL this
cannot carry over exactly (several hosts, a line break or edge spaces in a value)
is refused rather than altered. Runs in the service image (Python, no packages).
"""

import os
import sys
from urllib.parse import parse_qsl, unquote, urlsplit

KEYWORDS_FROM_QUERY = {
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl",
    "connect_timeout", "application_name", "options", "target_session_attrs",
    "channel_binding", "gssencmode", "sslnegotiation", "require_auth",
}  # fmt: skip


def service(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("not a postgresql:// URL")
    if "," in parts.netloc:
        raise ValueError("several hosts: give the service file by hand")
    fields = {
        "host": parts.hostname,
        "port": str(parts.port) if parts.port else None,
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "dbname": unquote(parts.path[1:]) if parts.path[1:] else None,
    }
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key not in KEYWORDS_FROM_QUERY:
            raise ValueError(f"a URL parameter this does not carry over: {key}")
        fields[key] = value
    found = {key: value for key, value in fields.items() if value is not None}
    for key, value in found.items():
        if "\n" in value or "\r" in value or value != value.strip():
            raise ValueError(f"{key}: a line break or an edge space a service file cannot hold")
    return found


def main() -> int:
    target = sys.argv[1]
    try:
        fields = service(os.environ["MIGRATION_DATABASE_URL"])
    except (KeyError, ValueError) as exc:
        # never the URL itself: it holds the password
        print(f"error: MIGRATION_DATABASE_URL: {exc}", file=sys.stderr)
        return 2
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write("[admin]\n" + "".join(f"{key}={value}\n" for key, value in fields.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
