#!/bin/bash
# A B B A: A = current catch_up_wait, B = the cap for any catch-up
cd /work/main
. .venv/bin/activate
export PYTHONPATH=services:services/lab:.
P=services/healthscore/service/projector.py
cp $P /tmp/cw/projector.orig.py
python - <<'PY'
s=open('/tmp/cw/projector.orig.py').read()
s=s.replace("return 0.0 if backlog_seconds < after else min(window, backlog_seconds)","return 0.0 if backlog_seconds < after else window")
open('/tmp/cw/projector.B.py','w').write(s)
PY
for v in A B B A; do
  if [ $v = B ]; then cp /tmp/cw/projector.B.py $P; else cp /tmp/cw/projector.orig.py $P; fi
  n=$(ls /tmp/cw/*.json 2>/dev/null | wc -l)
  python -m healthscore.cli bench --events 1000000 --organizations 100000 --baseline-events 0 --skip-latency --json-out /tmp/cw/$n-$v.json > /tmp/cw/$n-$v.log 2>&1
done
cp /tmp/cw/projector.orig.py $P
echo done > /tmp/cw/DONE
