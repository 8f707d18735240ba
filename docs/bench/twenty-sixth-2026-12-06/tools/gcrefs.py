"""Run `healthscore`; at some full collections log who holds the ConsumerRecords alive."""

import collections
import contextlib
import gc
import os
import sys

from healthscore.service import gctuning

OUT = f"{os.environ.get('OUT_DIR', '/tmp')}/refs-{os.getpid()}.txt"
_orig = gctuning.FullCollectionPacer.after_batch
_n = [0]


def name(o):
    if isinstance(o, (list, tuple, dict, set)):
        return f"{type(o).__name__}[{len(o)}]"
    return type(o).__module__ + "." + type(o).__qualname__


def desc(o):
    import types

    if isinstance(o, types.FrameType):
        return f"frame {o.f_code.co_name} {o.f_code.co_filename.rsplit('/', 3)[-3:]}:{o.f_lineno}"
    if isinstance(o, types.CoroutineType):
        return f"coro {o.__qualname__}"
    if isinstance(o, dict):
        return f"dict[{len(o)}] keys={list(o)[:5]}"
    if isinstance(o, (list, tuple)):
        return f"{type(o).__name__}[{len(o)}] first={type(o[0]).__name__ if o else None}"
    return name(o)


def after_batch(self, records=None):
    batch = self._batch_records if records is None else records
    due = self.records + batch >= self._every_records
    _orig(self, records)
    if not due:
        return
    _n[0] += 1
    if _n[0] not in (8, 16, 30):
        return
    import contextvars

    msgs = [o for o in gc.get_objects() if type(o).__name__ == "KafkaMessage"]
    recs = msgs
    ids = {id(m) for m in msgs}
    holders = collections.Counter()
    for ctx in [o for o in gc.get_objects() if isinstance(o, contextvars.Context)]:
        held = [
            v
            for v in ctx.values()
            if id(v) in ids or (isinstance(v, list) and any(id(x) in ids for x in v))
        ]
        if not held:
            continue
        for h in gc.get_referrers(ctx):
            if h is recs:
                continue
            d = desc(h) + (" " + repr(h)[:160] if "Handle" in type(h).__name__ else "")
            cb = getattr(h, "_callback", None) or getattr(h, "callback", None)
            if cb is not None:
                d += f" cb={getattr(cb, '__qualname__', repr(cb))[:100]}"
            coro = getattr(h, "get_coro", None)
            if coro is not None:
                with contextlib.suppress(Exception):
                    d += f" coro={h.get_coro().__qualname__}"
            holders[d] += 1
    with open(OUT, "a") as f:
        f.write(f"--- {_n[0]}: {len(msgs)} KafkaMessages; contexts holding them, by referrer:\n")
        for k, v in holders.most_common(20):
            f.write(f"  {v} {k}\n")
    del recs


gctuning.FullCollectionPacer.after_batch = after_batch

if __name__ == "__main__":
    from healthscore.cli import main

    sys.exit(main(sys.argv[1:]))
