#!/bin/bash
cd /work/main
source .venv/bin/activate
export PYTHONPATH=services:services/lab:.
RR="env PYTHONPATH=/work/wt-rr/services:/work/wt-rr/services/lab /work/main/.venv/bin/python -m healthscore.cli serve"
run() { local name=$1; shift
  healthscore bench --events 300000 --organizations 30000 --baseline-events 0 --skip-latency --service-processes 3 --json-out /tmp/s11/$name.json "$@" > /tmp/s11/$name.log 2>&1; }
run range-1
run rr-1 --service-command "$RR"
run rr-2 --service-command "$RR"
run range-2
touch /tmp/s11/ab3-DONE
