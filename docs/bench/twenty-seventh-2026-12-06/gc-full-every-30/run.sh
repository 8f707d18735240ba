#!/usr/bin/env bash
# A B B A: GC_FULL_EVERY_BATCHES 3 (A, default) vs 30 (B), 1M/100k
cd /work/main && . .venv/bin/activate && export PYTHONPATH=services:services/lab:.
for v in A B B A; do
  n=$([ $v = A ] && echo 3 || echo 30)
  i=$((i+1))
  GC_FULL_EVERY_BATCHES=$n python -m healthscore.cli bench --events 1000000 --organizations 100000 --baseline-events 0 --skip-latency --json-out /tmp/gcab/$i-$v.json > /tmp/gcab/$i-$v.log 2>&1
  echo "$i $v done $(date)" >> /tmp/gcab/progress
done
