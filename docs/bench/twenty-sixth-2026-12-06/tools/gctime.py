"""Run `healthscore` summing the CPU time of garbage collections by generation (gc.callbacks)."""

import atexit
import gc
import os
import sys
import time

OUT = f"{os.environ.get('OUT_DIR', '/tmp')}/gctime-{os.getpid()}.txt"
_spent = [0.0, 0.0, 0.0]
_count = [0, 0, 0]
_start = [0.0]
_t0 = time.process_time()


def _cb(phase, info):
    if phase == "start":
        _start[0] = time.thread_time()
    else:
        g = info["generation"]
        _spent[g] += time.thread_time() - _start[0]
        _count[g] += 1


def _dump(*_a):
    total = time.process_time() - _t0
    with open(OUT, "w") as f:
        f.write(
            f"process cpu {total:.2f} s; gc by generation (count, cpu s): "
            + ", ".join(f"gen{g} {_count[g]} {_spent[g]:.2f}" for g in range(3))
            + f"; gc share {sum(_spent) / total * 100:.1f}%\n"
        )


gc.callbacks.append(_cb)
atexit.register(_dump)

if __name__ == "__main__":
    from healthscore.cli import main

    try:
        sys.exit(main(sys.argv[1:]))
    finally:
        _dump()
