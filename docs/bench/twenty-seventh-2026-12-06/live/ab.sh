#!/usr/bin/env bash
. /work/main/.venv/bin/activate
i=0
for v in old new old new; do
  i=$((i+1))
  if [ $v = old ]; then cd /tmp/old17; else cd /work/main; fi
  export PYTHONPATH=services:services/lab:.
  python -m healthscore.cli bench --events 20000 --organizations 20000 --baseline-events 0 --rate 3000 --latency-seconds 30 --json-out /tmp/live/ab-$i-$v.json --work-dir /tmp/live/work-$i-$v > /tmp/live/ab-$i-$v.log 2>&1
  echo "$i $v done $(date)" >> /tmp/live/ab-progress
done
