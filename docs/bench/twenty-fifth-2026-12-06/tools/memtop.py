"""Run `healthscore` under tracemalloc; every 60 s append the top allocation sites by size."""

import os
import sys
import threading
import time
import tracemalloc

tracemalloc.start(1)
OUT = f"/tmp/rss25/memtop-{os.getpid()}.txt"


def rss() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def watch() -> None:
    started = time.monotonic()
    while True:
        time.sleep(60)
        snap = tracemalloc.take_snapshot()
        current, peak = tracemalloc.get_traced_memory()
        with open(OUT, "a") as out:
            out.write(
                f"\n=== {time.monotonic() - started:.0f}s traced {current / 1e6:.1f} MB"
                f" peak {peak / 1e6:.1f} MB rss {rss():.0f} MB\n"
            )
            for key in ("filename", "lineno"):
                for stat in snap.statistics(key)[:15]:
                    site = stat.traceback.format()[0].strip()
                    out.write(f"{stat.size / 1e6:8.2f} MB {stat.count:9d} {site}\n")
                out.write("--\n")


def run() -> int:
    threading.Thread(target=watch, daemon=True).start()
    from healthscore.cli import main

    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(run())
