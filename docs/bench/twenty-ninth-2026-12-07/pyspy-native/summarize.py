"""Where the service's busy samples go, from py-spy's raw output (`--native -f raw`).

Samples of a thread waiting on a lock (`PyThread_acquire_lock_timed` among the three
innermost frames: the executor's and other idle threads) are left out; the rest are
the busy samples. Prints, as a share of them, the samples whose stack holds each of a
few frames (inclusive), and the 25 innermost frames (self).

    python summarize.py serve-0.raw.gz serve-1.raw.gz
"""

from __future__ import annotations

import gzip
import sys
from collections import Counter

INCLUSIVE = (
    "BatchPipeline._apply",
    "compute_batch_effects",
    "CPyDef_score",
    "CPyDef_aggregate",
    "_do_execute",
    "protocol_array_encode",
    "gc_collect_main",
    "pack_state",
    "unpack_state",
    "Decoder._decode",
    "Projector",
    "write (libc",
    "epoll_pwait",
)


def main(paths: list[str]) -> None:
    inclusive: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    busy = idle = 0
    for path in paths:
        with gzip.open(path, "rt") as handle:
            for line in handle:
                stack, _, count = line.rstrip().rpartition(" ")
                if not stack:
                    continue
                n = int(count)
                frames = stack.split(";")
                if any("PyThread_acquire_lock_timed" in frame for frame in frames[-3:]):
                    idle += n
                    continue
                busy += n
                joined = ";".join(frames)
                for name in INCLUSIVE:
                    if name in joined:
                        inclusive[name] += n
                innermost[frames[-1]] += n
    print(f"busy samples {busy}, idle threads' {idle}")
    print("inclusive, % of busy:")
    for name, n in inclusive.most_common():
        print(f"  {100 * n / busy:5.1f}  {name}")
    print("innermost frames, % of busy:")
    for name, n in innermost.most_common(25):
        print(f"  {100 * n / busy:5.1f}  {name[:120]}")


if __name__ == "__main__":
    main(sys.argv[1:])
