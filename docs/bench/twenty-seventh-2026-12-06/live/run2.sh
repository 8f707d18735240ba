#!/usr/bin/env bash
# the established live command (thirteenth to seventeenth sessions), at 50% of today's 1M/100k capacity
cd /work/main && . .venv/bin/activate && export PYTHONPATH=services:services/lab:.
for r in 1 2; do
python -m healthscore.cli bench --events 20000 --organizations 20000 --baseline-events 0 --rate 3000 --latency-seconds 30 --json-out /tmp/live/std-3000-$r.json > /tmp/live/std-3000-$r.log 2>&1
echo "std $r done $(date)" >> /tmp/live/progress
done
