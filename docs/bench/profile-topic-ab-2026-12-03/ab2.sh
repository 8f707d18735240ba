#!/bin/bash
cd /work/main
source .venv/bin/activate
export PYTHONPATH=services:services/lab:.
OLD="env PYTHONPATH=/work/wt-old/services:/work/wt-old/services/lab /work/main/.venv/bin/python -m healthscore.cli serve"
run() { local name=$1; shift
  healthscore bench --events 300000 --organizations 30000 --baseline-events 0 --skip-latency --json-out /tmp/s11/$name.json "$@" > /tmp/s11/$name.log 2>&1; }
run old-3 --service-command "$OLD"
run new-3
run new-4
run old-4 --service-command "$OLD"
touch /tmp/s11/ab2-DONE
