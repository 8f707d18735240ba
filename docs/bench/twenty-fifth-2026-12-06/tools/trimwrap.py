"""Run `healthscore` with malloc_trim(0) after each paced full collection; log its cost."""

import ctypes
import os
import sys
import time

from healthscore.service import gctuning

_libc = ctypes.CDLL("libc.so.6")
_orig = gctuning.FullCollectionPacer.after_batch
OUT = f"/tmp/rss25/trim-{os.getpid()}.txt"


def after_batch(self, records=None):
    before = self.collections
    _orig(self, records)
    if self.collections != before:
        t = time.perf_counter()
        _libc.malloc_trim(0)
        with open(OUT, "a") as f:
            f.write(f"{(time.perf_counter() - t) * 1e3:.2f}\n")


gctuning.FullCollectionPacer.after_batch = after_batch

if __name__ == "__main__":
    from healthscore.cli import main

    sys.exit(main(sys.argv[1:]))
