#!/usr/bin/env bash
# Offline checks of deploy/: YAML syntax, Prometheus rules and config, rule
# unit tests, kustomize renders (and schemas when kubernetes-validate is
# installed), shell syntax, and that the copies under k8s/jobs/files match
# their compose originals. Needs no Docker engine and no cluster.
#   deploy/check.sh            (PYTHON=... to pick an interpreter with PyYAML)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
fail=0
step() { printf '\n== %s\n' "$*"; }

step "YAML syntax"
"$PYTHON" - <<'PY' || fail=1
import pathlib, sys
import yaml
bad = 0
for path in sorted(pathlib.Path(".").rglob("*.y*ml")):
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
        print(f"ok   {path} ({len(docs)} document(s))")
    except yaml.YAMLError as exc:
        bad += 1
        print(f"FAIL {path}: {exc}")
sys.exit(1 if bad else 0)
PY

step "promtool"
if command -v promtool >/dev/null; then
  promtool check rules prometheus/alerts.yml || fail=1
  promtool test rules prometheus/alerts_test.yml || fail=1
  tmp=$(mktemp -d)
  cp compose/prometheus.yml prometheus/alerts.yml "$tmp"/
  promtool check config "$tmp/prometheus.yml" || fail=1
  rm -rf "$tmp"
else
  echo "promtool not found: skipped"
fi

step "kustomize"
if command -v kubectl >/dev/null; then
  for k in k8s k8s/jobs k8s/overlays/example; do
    out=$(mktemp)
    if kubectl kustomize "$k" >"$out"; then
      echo "ok   $k ($(grep -c '^kind:' "$out") objects)"
      if command -v kubernetes-validate >/dev/null; then
        kubernetes-validate --strict --quiet "$out" || fail=1
      fi
    else
      echo "FAIL $k"; fail=1
    fi
    rm -f "$out"
  done
else
  echo "kubectl not found: skipped"
fi

step "shell syntax"
bash -n compose/create-topics.sh && echo "ok   compose/create-topics.sh" || fail=1

step "copies"
for pair in "compose/init/10-service-login.sql k8s/jobs/files/10-service-login.sql" \
            "compose/init/20-api-login.sql k8s/jobs/files/20-api-login.sql" \
            "compose/create-topics.sh k8s/jobs/files/create-topics.sh"; do
  set -- $pair
  if cmp -s "$1" "$2"; then echo "ok   $2 = $1"; else echo "FAIL $2 differs from $1"; fail=1; fi
done

exit $fail
