#!/usr/bin/env bash
cd /work/main && . .venv/bin/activate && export PYTHONPATH=services:services/lab:.
python -m healthscore.cli bench --events 1000000 --organizations 100000 --baseline-events 20000 --skip-latency --json-out /tmp/refresh/1m-100k-naive.json > /tmp/refresh/1m-100k-naive.log 2>&1
echo "naive done $(date)" >> /tmp/refresh/progress
python -m healthscore.cli bench --events 1000000 --organizations 100000 --baseline-events 0 --skip-latency --skew 1.1 --json-out /tmp/refresh/1m-100k-skew.json > /tmp/refresh/1m-100k-skew.log 2>&1
echo "skew done $(date)" >> /tmp/refresh/progress
