"""Run `healthscore` logging each full collection: duration, objects walked, top types."""

import collections
import gc
import os
import sys
import time

from healthscore.service import gctuning

OUT = f"{os.environ.get('OUT_DIR', '/tmp')}/gc-{os.getpid()}.txt"
_orig = gctuning.FullCollectionPacer.after_batch
_n = [0]


def after_batch(self, records=None):
    batch = self._batch_records if records is None else records
    if self.records + batch >= self._every_records:
        n2 = len(gc.get_objects(2))
        n1 = len(gc.get_objects(1))
        n0 = len(gc.get_objects(0))
        t = time.perf_counter()
        c = time.thread_time()
        _orig(self, records)
        dt = time.perf_counter() - t
        dc = time.thread_time() - c
        st = gc.get_stats()[2]
        _n[0] += 1
        with open(OUT, "a") as f:
            f.write(
                f"full {dt * 1e3:.1f} ms cpu {dc * 1e3:.1f} ms collected2={st['collected']} "
                f"uncollectable={st['uncollectable']} gen0={n0} gen1={n1} gen2={n2} "
                f"frozen={gc.get_freeze_count()}\n"
            )
            if _n[0] % 15 == 1:
                c = collections.Counter(type(o).__qualname__ for o in gc.get_objects(2))
                f.write("  " + ", ".join(f"{k}={v}" for k, v in c.most_common(25)) + "\n")
    else:
        _orig(self, records)


gctuning.FullCollectionPacer.after_batch = after_batch

if __name__ == "__main__":
    from healthscore.cli import main

    sys.exit(main(sys.argv[1:]))
