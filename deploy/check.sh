#!/usr/bin/env bash
# Offline checks of deploy/: YAML and JSON syntax, Prometheus rules and config,
# rule unit tests, the Grafana dashboard's PromQL, kustomize renders (and schemas
# when kubernetes-validate is installed), shell syntax, and that no file here is
# a copy of another. Needs no Docker engine and no cluster. CI runs it (.ci/run),
# and so does tests/unit/test_deploy.py.
#   deploy/check.sh            (PYTHON=... to pick an interpreter with PyYAML)
# A check whose tool is missing says "skipped" and does not fail; a check that
# runs and fails makes the exit status 1.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
fail=0
step() { printf '\n== %s\n' "$*"; }

step "YAML and JSON syntax"
"$PYTHON" - <<'PY' || fail=1
import json, pathlib, sys
import yaml
bad = 0
for path in sorted(pathlib.Path(".").rglob("*.y*ml")):
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
        print(f"ok   {path} ({len(docs)} document(s))")
    except yaml.YAMLError as exc:
        bad += 1
        print(f"FAIL {path}: {exc}")
for path in sorted(pathlib.Path(".").rglob("*.json")):
    try:
        json.loads(path.read_text())
        print(f"ok   {path}")
    except ValueError as exc:
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
  # every PromQL query of the dashboards, as recording rules: the parser Prometheus
  # itself uses. Grafana's variables get values first ($__rate_interval: 1m).
  if "$PYTHON" - grafana/dashboards "$tmp/dashboard-rules.yml" <<'PY'
import json, pathlib, re, sys
import yaml
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m", "$__interval": "5m", "$__range": "1h", "$job": ".*",
}
rules = []
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    dashboard = json.loads(path.read_text())
    panels = list(dashboard.get("panels", []))
    for row in dashboard.get("panels", []):
        panels.extend(row.get("panels", []))
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            if "$" in expr:
                sys.exit(f"{path}: panel {panel['title']!r}: unknown variable in {expr}")
            record = f"dashboard:{path.stem}:panel{panel['id']}:{target['refId']}"
            rules.append({"record": re.sub(r"[^a-zA-Z0-9_:]", "_", record), "expr": expr})
    print(f"{path}: {len(rules)} queries")
pathlib.Path(sys.argv[2]).write_text(
    yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]})
)
PY
  then
    promtool check rules "$tmp/dashboard-rules.yml" || fail=1
  else
    fail=1
  fi
  rm -rf "$tmp"
else
  echo "promtool not found: skipped"
fi

step "kustomize"
# kubectl's built-in kustomize, else a standalone kustomize. v5 is what is used
# here; a very old one (Debian's kubectl 1.20 has kustomize v2) knows neither
# components nor `labels` and fails the renders.
if command -v kubectl >/dev/null; then
  kz="kubectl kustomize"
  kubectl version --client 2>/dev/null | grep -i kustomize || true
elif command -v kustomize >/dev/null; then
  kz="kustomize build"
  echo "kustomize $(kustomize version 2>/dev/null || true)"
else
  kz=""
fi
if [ -n "$kz" ]; then
  # schemas (strict: an unknown or misspelt field fails), when kubernetes-validate is
  # installed (.ci/run installs it); the CRDs' kinds (KEDA, Prometheus Operator) have
  # no schema there and are only named
  validate=""
  if command -v kubernetes-validate >/dev/null; then
    validate="kubernetes-validate"
    echo "$(kubernetes-validate --version) (schemas of Kubernetes $(kubernetes-validate --help | grep -o 'Defaults to [0-9.]*' | cut -d' ' -f3))"
  else
    echo "kubernetes-validate not found: schema checks skipped"
  fi
  for k in k8s k8s/jobs k8s/overlays/example; do
    out=$(mktemp)
    if $kz "$k" >"$out"; then
      echo "ok   $k ($(grep -c '^kind:' "$out") objects)"
      if [ -n "$validate" ]; then
        if kubernetes-validate --strict --quiet --no-warn "$out"; then
          echo "ok   $k: schemas"
        else
          echo "FAIL $k: schemas"; fail=1
        fi
      fi
    else
      echo "FAIL $k"; fail=1
    fi
    rm -f "$out"
  done
else
  echo "neither kubectl nor kustomize found: skipped"
fi

step "shell syntax"
for script in $(find . -name '*.sh' | sort); do
  if bash -n "$script"; then echo "ok   $script"; else echo "FAIL $script"; fail=1; fi
done

step "no copies"
# One source for every file: compose and Kubernetes share theirs through
# kustomizations next to the originals (compose/kustomization.yaml,
# grafana/kustomization.yaml), never through a second copy to keep in step.
dups=$(find . -type f -size +0 -print0 | xargs -0 sha256sum | sort | uniq -w64 -D)
if [ -n "$dups" ]; then
  echo "FAIL identical files (keep one, reference it from the other place):"
  echo "$dups"; fail=1
else
  echo "ok   no two files alike"
fi

exit $fail
