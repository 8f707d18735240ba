#!/usr/bin/env bash
. /work/main/.venv/bin/activate
export BATCH_MAX_RECORDS=2000
i=0
for v in old new new old old new; do
  i=$((i+1))
  if [ $v = old ]; then cd /tmp/old17; else cd /tmp/new28; fi
  export PYTHONPATH=services:services/lab:.
  python -m healthscore.cli bench --events 200000 --organizations 20000 --baseline-events 0 --skip-latency --batch-max-records 2000 --json-out /tmp/ab28/$i-$v.json > /tmp/ab28/$i-$v.log 2>&1
  echo "$i $v done $(date)" >> /tmp/ab28/progress
done
