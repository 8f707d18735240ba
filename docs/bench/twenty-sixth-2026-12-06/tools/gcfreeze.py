"""Run `healthscore` with each paced full collection followed by gc.freeze() (the
survivors are not walked again), every UNFREEZE_EVERY-th collection first unfreezing
all (a real full collection); logs each collection's CPU time."""

import gc
import os
import sys
import time

from healthscore.service import gctuning

OUT = f"{os.environ.get('OUT_DIR', '/tmp')}/gcfreeze-{os.getpid()}.txt"
EVERY = int(os.environ.get("UNFREEZE_EVERY", "20"))
_n = [0]


def after_batch(self, records=None):
    if self.every_batches <= 0:
        return
    self.records += self._batch_records if records is None else records
    if self.records < self._every_records:
        return
    self.records = 0
    _n[0] += 1
    c = time.thread_time()
    full = _n[0] % EVERY == 0
    if full:
        gc.unfreeze()
    found = gc.collect()
    gc.freeze()
    self.collections += 1
    with open(OUT, "a") as f:
        f.write(
            f"{'unfrozen' if full else 'frozen'} cpu {(time.thread_time() - c) * 1e3:.1f} ms "
            f"found {found} frozen {gc.get_freeze_count()}\n"
        )


gctuning.FullCollectionPacer.after_batch = after_batch

if __name__ == "__main__":
    from healthscore.cli import main

    sys.exit(main(sys.argv[1:]))
