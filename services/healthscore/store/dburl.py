"""Small helpers on PostgreSQL URLs (no secrets ever leave through them)."""

import re
from urllib.parse import urlsplit, urlunsplit

# query parameters libpq and asyncpg read a secret from (the login's, a client key's)
_SECRET_PARAMETER = re.compile(r"(^|&)((?:ssl)?password)=[^&]*", re.IGNORECASE)


def with_database(url: str, database: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and error messages."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = _SECRET_PARAMETER.sub(r"\1\2=***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def unreachable(setting: str, url: str, error: BaseException) -> str:
    """The one line a command prints when the database a setting names cannot be
    connected to (its password redacted)."""
    return (
        f"cannot connect to PostgreSQL at {setting} ({redact(url)}): "
        f"{type(error).__name__}: {error}"
    )
