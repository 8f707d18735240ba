"""Run a `healthscore` command under tracemalloc, appending every minute the memory
traced and the allocation sites that grew since the first snapshot (45 s in).

`healthscore bench ... --service-command "python memtrace.py serve"`: each service
process writes /tmp/bench24/memtrace-<pid>.txt.
"""

import os
import sys
import threading
import time
import tracemalloc

# tracemalloc starts before the service imports anything it will allocate
tracemalloc.start(4)
OUT = f"/tmp/bench24/memtrace-{os.getpid()}.txt"


def watch() -> None:
    time.sleep(45)
    base = tracemalloc.take_snapshot()
    started = time.monotonic()
    while True:
        time.sleep(60)
        stats = tracemalloc.take_snapshot().compare_to(base, "traceback")
        current, peak = tracemalloc.get_traced_memory()
        with open(OUT, "a") as out:
            out.write(
                f"\n=== {time.monotonic() - started:.0f}s after base: "
                f"traced {current / 1e6:.1f} MB peak {peak / 1e6:.1f} MB\n"
            )
            for stat in stats[:12]:
                out.write(
                    f"{stat.size_diff / 1e6:+.2f} MB ({stat.count_diff:+d}) "
                    f"total {stat.size / 1e6:.2f} MB\n"
                )
                for line in stat.traceback.format()[-8:]:
                    out.write("    " + line + "\n")


def run() -> int:
    threading.Thread(target=watch, daemon=True).start()
    from healthscore.cli import main

    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(run())
