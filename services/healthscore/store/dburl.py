"""Small helpers on PostgreSQL URLs (no secrets ever leave through them)."""

import re
from urllib.parse import unquote, urlsplit, urlunsplit

# query parameters libpq and asyncpg read a secret from (the login's, a client key's),
# by their names as the clients decode them
_SECRET_PARAMETERS = ("password", "sslpassword")
# where a URL's authority ends (RFC 3986)
_AUTHORITY_END = re.compile(r"[/?#]")


def with_database(url: str, database: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and error messages. Never raises,
    whatever the string: a URL the clients would refuse is the one most likely to be
    printed. What cannot be told apart from a password is replaced too: a port that is
    not a number (`postgresql://user:password/db`, the host forgotten, reads the
    password as the port) and, when a password holds an unencoded '/', '?' or '#',
    all of the URL up to its last '@'."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "(not a URL)"
    # the authority runs to the first '/', '?' or '#' after its last '@': a password's
    # unencoded '/' stays inside it, at worst with more of the URL
    at = rest.rfind("@")
    end = _AUTHORITY_END.search(rest, at + 1)
    split = len(rest) if end is None else end.start()
    authority, tail = rest[:split], rest[split:]
    userinfo, at_sign, hosts = authority.rpartition("@")
    if ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    hosts = ",".join(_redact_port(host) for host in hosts.split(","))
    tail, hash_sign, fragment = tail.partition("#")
    path, question, query = tail.partition("?")
    query = "&".join(_redact_parameter(p) for p in query.split("&")) if question else ""
    return f"{scheme}://{userinfo}{at_sign}{hosts}{path}{question}{query}{hash_sign}{fragment}"


def clients_parse(url: str) -> bool:
    """Whether asyncpg can read the URL's hosts and ports: else its first connection
    fails in a traceback whose message may be a piece of the password (a password's
    unencoded '/' ends the authority early; `postgresql://user:password/db` reads the
    password as the port)."""
    try:
        hosts = urlsplit(url).netloc.rpartition("@")[2]
    except ValueError:  # an unmatched bracket, or a bracketed host that is no address
        return False
    for host in hosts.split(","):
        if host.startswith("["):
            _address, bracket, port = host[1:].partition("]")
            if not bracket or (port and not (port[0] == ":" and port[1:].isdigit())):
                return False
        elif ":" in host and not host.rpartition(":")[2].isdigit():
            return False
    return True


def _redact_port(host: str) -> str:
    name, colon, port = host.rpartition(":")
    if not colon or port.isdigit() or (host.startswith("[") and not name.endswith("]")):
        return host  # no port, a port, or inside an IPv6 address
    return name + ":***"


def _redact_parameter(parameter: str) -> str:
    name, equals, _value = parameter.partition("=")
    if equals and unquote(name).strip().lower() in _SECRET_PARAMETERS:
        return name + "=***"
    return parameter


def unreachable(setting: str, url: str, error: BaseException) -> str:
    """The one line a command prints when the database a setting names cannot be
    connected to (its password redacted)."""
    return (
        f"cannot connect to PostgreSQL at {setting} ({redact(url)}): "
        f"{type(error).__name__}: {error}"
    )
