#!/bin/bash
cd "$(git rev-parse --show-toplevel)" && . .venv/bin/activate
OUT=${OUT:-/tmp/gc29}; mkdir -p $OUT
export PYTHONPATH=services:services/lab:.
T=docs/bench/twenty-sixth-2026-12-06/tools
run() { # name, extra env, service command
  name=$1; shift
  echo "== $name $(date +%T)" >> $OUT/progress
  env "$@" OUT_DIR=$OUT python -m healthscore.cli bench --events 1000000 --organizations 100000 --baseline-events 0 --skip-latency --json-out $OUT/$name.json ${SVC:+--service-command "$SVC"} > $OUT/$name.txt 2>&1
}
SVC= run A1 X=1
SVC="python $T/gcfreeze.py serve" run B1 X=1
SVC= run C1 GC_FULL_EVERY_BATCHES=10
SVC= run C2 GC_FULL_EVERY_BATCHES=10
SVC="python $T/gcfreeze.py serve" run B2 X=1
SVC= run A2 X=1
echo done >> $OUT/progress
