#!/bin/bash
cd /work/main
. .venv/bin/activate
export PYTHONPATH=services:services/lab:.
P=services/healthscore/service/projector.py
for v in A B B A; do
  cp /tmp/cw2/projector.$v.py $P
  n=$(ls /tmp/cw2/*.json 2>/dev/null | wc -l)
  python -m healthscore.cli bench --events 1000000 --organizations 100000 --baseline-events 0 --skip-latency --json-out /tmp/cw2/$n-$v.json > /tmp/cw2/$n-$v.log 2>&1
done
cp /tmp/cw2/projector.B.py $P
echo done > /tmp/cw2/DONE
