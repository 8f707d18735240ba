"""Run `healthscore` and, at a few full collections, log what cyclic garbage they found."""

import collections
import gc
import os
import sys
import types

from healthscore.service import gctuning

OUT = f"{os.environ.get('OUT_DIR', '/tmp')}/garbage-{os.getpid()}.txt"
_orig = gctuning.FullCollectionPacer.after_batch
_n = [0]


def describe(o):
    if isinstance(o, types.FrameType):
        return f"frame {o.f_code.co_name} {o.f_code.co_filename.rsplit('/', 2)[-2:]}:{o.f_lineno}"
    if isinstance(o, BaseException):
        return f"exc {type(o).__qualname__}: {str(o)[:80]}"
    if isinstance(o, types.CoroutineType):
        return f"coro {o.__qualname__}"
    if isinstance(o, types.FunctionType):
        return f"func {o.__qualname__}"
    if isinstance(o, (list, dict, tuple, set)):
        return f"{type(o).__name__} len {len(o)}"
    return type(o).__module__ + "." + type(o).__qualname__


def after_batch(self, records=None):
    batch = self._batch_records if records is None else records
    due = self.records + batch >= self._every_records
    if due:
        _n[0] += 1
    if due and _n[0] in (6, 12, 24):
        gc.set_debug(gc.DEBUG_SAVEALL)
        _orig(self, records)
        gc.set_debug(0)
        c = collections.Counter(describe(o) for o in gc.garbage)
        with open(OUT, "a") as f:
            f.write(f"--- collection {_n[0]}: {len(gc.garbage)} objects\n")
            for k, v in c.most_common(60):
                f.write(f"  {v:5d} {k}\n")
        gc.garbage.clear()
    else:
        _orig(self, records)


gctuning.FullCollectionPacer.after_batch = after_batch

if __name__ == "__main__":
    from healthscore.cli import main

    sys.exit(main(sys.argv[1:]))
