#!/usr/bin/env bash
cd /work/main && . .venv/bin/activate && export PYTHONPATH=services:services/lab:.
for r in 1 2; do
python -m healthscore.cli bench --events 200000 --organizations 20000 --baseline-events 0 --rate 3000 --latency-seconds 90 --json-out /tmp/live/live-3000-$r.json > /tmp/live/live-3000-$r.log 2>&1
echo "live $r done $(date)" >> /tmp/live/progress
done
