#!/bin/bash
# new (HEAD) against bd09222 (the tenth session's end) at 3,000/s, ABBA
cd /work/main
source .venv/bin/activate
export PYTHONPATH=services:services/lab:.
OUT=docs/bench/live-3000-ab-2026-12-04
OLD="env PYTHONPATH=/work/wt-old/services:/work/wt-old/services/lab /work/main/.venv/bin/python -m healthscore.cli serve"
run() { local name=$1; shift
  healthscore bench --events 20000 --organizations 20000 --baseline-events 0 --rate 3000 \
    --latency-seconds 30 --json-out $OUT/$name.json "$@" > /tmp/s12/$name.log 2>&1; }
run old-1 --service-command "$OLD"
run new-1
run new-2
run old-2 --service-command "$OLD"
