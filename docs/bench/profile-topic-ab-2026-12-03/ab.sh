#!/bin/bash
cd /work/main
source .venv/bin/activate
export PYTHONPATH=services:services/lab:.
OLD="env PYTHONPATH=/work/wt-old/services:/work/wt-old/services/lab /work/main/.venv/bin/python -m healthscore.cli serve"
run() { # name extra...
  local name=$1; shift
  healthscore bench --events 300000 --organizations 30000 --baseline-events 0 --skip-latency --json-out /tmp/s11/$name.json "$@" > /tmp/s11/$name.log 2>&1
}
run new-1
run old-1 --service-command "$OLD"
run old-2 --service-command "$OLD"
run new-2
touch /tmp/s11/ab-DONE
