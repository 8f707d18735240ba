"""deploy/ checked like code.

`deploy/check.sh` passes; every metric the Grafana dashboard and the Prometheus
rules (and their promtool tests) query is one the service exports; the compose
file references files that exist and wires Grafana to its Prometheus and its
dashboard; the Kubernetes renders carry the compose files and the dashboard
themselves, not copies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "healthscore.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"

# sample names each metric type adds to its family name on /metrics (prometheus_client)
EXPOSED_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
}

# metrics the rules may use that come from elsewhere than the service
EXTERNAL_METRICS = {
    "up": "Prometheus, one per scrape target",
    "kube_deployment_spec_replicas": "kube-state-metrics",
    "kube_deployment_status_replicas_ready": "kube-state-metrics",
    "kube_deployment_status_observed_generation": "kube-state-metrics",
}


def exported_metric_names() -> set[str]:
    """Every sample name the service's /metrics and the API's ops port /metrics can carry
    (both are scraped: deploy/compose/prometheus.yml, the k8s annotations)."""
    from healthscore.api.metrics import ApiMetrics
    from healthscore.service.ops.metrics import Metrics

    names: set[str] = set()
    for registry in (Metrics().registry, ApiMetrics().registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in EXPOSED_SUFFIXES[family.type])
    return names


# --- PromQL: the metric names an expression selects -------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_COMMENTS = re.compile(r"#[^\n]*")
_GRAFANA_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])[a-zA-Z_:][\w:]*")
_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names selected in a PromQL expression.

    Strings, comments, Grafana variables, label matchers, ranges and the label
    lists of by/without/on/ignoring/group_* go first; of what is left, an
    identifier followed by "(" is a function or an aggregation, the keywords are
    operators, and the rest are metric names.
    """
    text = _STRINGS.sub(" ", expr)
    text = _COMMENTS.sub(" ", text)
    text = _GRAFANA_VARIABLES.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        if text[match.end() :].lstrip().startswith("("):
            continue  # rate(, sum(, histogram_quantile(, ...
        if name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def grafana_variable_query(query: Any) -> str | None:
    """The PromQL inside a Grafana Prometheus variable query, None when it has none."""
    text = query.get("query", "") if isinstance(query, dict) else str(query)
    text = text.strip()
    if match := re.fullmatch(r"label_values\((.*)\)", text, re.DOTALL):
        inner = match.group(1)
        # label_values(label) or label_values(selector, label)
        return inner.rsplit(",", 1)[0] if "," in inner else None
    if match := re.fullmatch(r"query_result\((.*)\)", text, re.DOTALL):
        return match.group(1)
    if re.fullmatch(r"(label_names|metrics)\(.*\)", text, re.DOTALL):
        return None
    raise AssertionError(f"a Grafana variable query this test cannot read: {text!r}")


# --- where the expressions are ----------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = load_dashboard()
    found = [
        (f"dashboard panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            promql = grafana_variable_query(variable["query"])
            if promql is not None:
                found.append((f"dashboard variable ${variable['name']}", promql))
    return found


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def rule_expressions() -> list[tuple[str, str]]:
    found = [
        (f"alerts.yml {rule.get('alert') or rule['record']}", rule["expr"])
        for rule in alert_rules()
    ]
    for number, test in enumerate(yaml.safe_load(ALERTS_TEST.read_text())["tests"], 1):
        for series in test.get("input_series", []):
            found.append((f"alerts_test.yml test {number} input", series["series"]))
        for case in test.get("promql_expr_test", []):
            found.append((f"alerts_test.yml test {number} promql", case["expr"]))
    return found


def unknown_metrics(expressions: list[tuple[str, str]]) -> dict[str, set[str]]:
    known = exported_metric_names() | set(EXTERNAL_METRICS)
    known |= {rule["record"] for rule in alert_rules() if "record" in rule}
    unknown = {where: metric_names(expr) - known for where, expr in expressions}
    return {where: names for where, names in unknown.items() if names}


# --- the tests --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.99, sum by (namespace, le) (rate(a_bucket{job=~"$job"}[5m])))',
            {"a_bucket"},
        ),
        ("max by (topic) (x) > on (namespace) group_left (y) max(z offset 5m) * 1e3", {"x", "z"}),
        (
            "sum without (le) (rate(b_total[$__rate_interval])) / ignoring(q) c or vector(0)",
            {"b_total", "c"},
        ),
        (
            "ns:lag:total > 0 and deriv(ns:lag:total[15m]) > bool Inf  # a comment name",
            {"ns:lag:total"},
        ),
        ('label_replace(up{a="b"}, "dst", "$1", "src", "(.*)")', {"up"}),
        ("sum(increase(q_total[1h:5m]))", {"q_total"}),
    ],
)
def test_metric_names_of_an_expression(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_misspelt_metric_is_reported() -> None:
    misspelt = [("probe", 'sum(rate(healthscore_events_consumd_total{job=~"$job"}[5m]))')]
    assert unknown_metrics(misspelt) == {"probe": {"healthscore_events_consumd_total"}}
    correct = [("probe", 'sum(rate(healthscore_events_consumed_total{job=~"$job"}[5m]))')]
    assert unknown_metrics(correct) == {}


def test_the_exported_names_are_read_from_the_service() -> None:
    names = exported_metric_names()
    assert {
        "healthscore_events_consumed_total",
        "healthscore_batch_duration_seconds_bucket",
        "healthscore_consumer_lag_records",
    } <= names
    # a counter has no bare family name on /metrics, a gauge no _total
    assert "healthscore_events_consumed" not in names
    assert "healthscore_consumer_lag_records_total" not in names


def test_the_dashboard_queries_only_exported_metrics() -> None:
    expressions = dashboard_expressions()
    assert len(expressions) > 20
    assert unknown_metrics(expressions) == {}


def test_the_dashboard_has_the_panels_operators_need() -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_expressions()))
    assert {
        "healthscore_consumer_lag_records",  # lag per partition
        "healthscore_events_consumed_total",  # events/s
        "healthscore_events_dead_lettered_total",  # DLQ rate by reason
        "healthscore_batch_duration_seconds_bucket",  # batch latency quantiles
        "healthscore_read_model_staleness_seconds",  # read-model staleness
        "healthscore_alerts_raised_total",  # alerts by kind
        "healthscore_organizations",  # organizations by band
        "healthscore_background_last_success_timestamp_seconds",  # a loop not working
        "healthscore_background_steps_total",  # background loop failures
        "healthscore_partitions_assigned",  # partitions each replica consumes
    } <= used
    exprs = " ".join(expr for _, expr in dashboard_expressions())
    assert "sum by (topic, reason)" in exprs
    assert "sum by (kind)" in exprs
    assert "max by (health_status)" in exprs
    assert "max by (topic, partition) (healthscore_consumer_lag_records" in exprs


def test_the_dashboard_works_in_any_grafana() -> None:
    """Panels use the $datasource variable, ids are unique, nothing overlaps."""
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(dashboard_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert target.get("datasource", panel["datasource"]) == panel["datasource"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_the_rules_and_their_tests_query_only_exported_metrics() -> None:
    expressions = rule_expressions()
    assert len(expressions) > 15
    assert unknown_metrics(expressions) == {}


def operations_anchors() -> set[str]:
    """The anchors GitHub gives docs/operations.md's headings."""
    anchors = set()
    for line in (ROOT / "docs" / "operations.md").read_text().splitlines():
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            words = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            anchors.add(words.replace(" ", "-"))
    return anchors


def test_every_alert_links_a_runbook_section_that_exists() -> None:
    # the on-call engineer paged at night follows the link: it must be there and lead
    # somewhere (an alert naming no runbook, or a renamed section, leaves them guessing)
    anchors = operations_anchors()
    assert {"lag-growing", "stored-offset-outside-the-log", "healthscore-lag"} <= anchors
    broken = {}
    for rule in alert_rules():
        if "alert" not in rule:
            continue
        text = " ".join(rule["annotations"].values())
        links = re.findall(r"Runbook: docs/operations\.md#([\w-]+)", text)
        if not links or set(links) - anchors:
            broken[rule["alert"]] = links
    assert broken == {}


# --- compose ----------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
    return loaded


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each bind mount of a service, short or long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        elif volume.get("type") == "bind":
            source, target = volume["source"], volume["target"]
        else:
            continue
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def mounted(service: dict[str, Any], path: str) -> Path:
    """The file in the repository that a path inside the container comes from."""
    for source, target in bind_mounts(service):
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return (COMPOSE_DIR / source / path[len(target) :].lstrip("/")).resolve()
    raise AssertionError(f"{path} is not bind-mounted")


def test_compose_references_files_and_services_that_exist() -> None:
    spec = compose()
    services = spec["services"]
    for name, service in services.items():
        for source, _ in bind_mounts(service):
            assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and not volume.startswith((".", "/")):
                assert volume.split(":")[0] in spec["volumes"], f"{name}: {volume}"
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        if "build" in service:
            context = COMPOSE_DIR / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file(), name


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def test_compose_variables_are_in_env_example() -> None:
    """A variable with no default is one env.example sets (comments aside)."""
    example = (COMPOSE_DIR / "env.example").read_text()
    defined = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, re.MULTILINE))
    needed = {
        name
        for text in strings(compose())
        for name in re.findall(r"\$\{([A-Z_][A-Z0-9_]*)(?:\}|:\?)", text)
    }
    assert needed, "no variables found: the pattern is wrong"
    assert needed - defined == set()


def test_compose_grafana_loads_the_dashboard_from_its_prometheus() -> None:
    services = compose()["services"]
    grafana, prometheus = services["grafana"], services["prometheus"]
    assert grafana["profiles"] == prometheus["profiles"] == ["monitoring"]
    assert "prometheus" in grafana["depends_on"]

    datasources = yaml.safe_load(
        mounted(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert [(d["type"], d["url"], d["isDefault"]) for d in datasources] == [
        ("prometheus", "http://prometheus:9090", True)
    ]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    scrape = yaml.safe_load(mounted(prometheus, "/etc/prometheus/prometheus.yml").read_text())
    assert datasources[0]["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]
    for rule_file in scrape["rule_files"]:
        assert mounted(prometheus, f"/etc/prometheus/{rule_file}") == ALERTS

    providers = yaml.safe_load(
        mounted(grafana, "/etc/grafana/provisioning/dashboards/healthscore.yml").read_text()
    )["providers"]
    assert [p["type"] for p in providers] == ["file"]
    assert mounted(grafana, providers[0]["options"]["path"]) == DASHBOARD.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounted(grafana, home) == DASHBOARD


# --- kustomize and check.sh -------------------------------------------------------


def kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render(directory: str) -> list[dict[str, Any]]:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kubectl nor kustomize on PATH: the renders are not checked")
    out = subprocess.run(
        [*command, str(DEPLOY / directory)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_the_jobs_mount_the_compose_files_themselves() -> None:
    objects = render("k8s/jobs")
    (files,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("healthscore-jobs-files-")
    ]
    assert files["data"] == {
        "10-service-login.sql": (COMPOSE_DIR / "init" / "10-service-login.sql").read_text(),
        "20-api-login.sql": (COMPOSE_DIR / "init" / "20-api-login.sql").read_text(),
        "create-topics.sh": (COMPOSE_DIR / "create-topics.sh").read_text(),
    }
    jobs = [o for o in objects if o["kind"] == "Job"]
    assert {job["metadata"]["name"] for job in jobs} == {
        "healthscore-migrate",
        "healthscore-topics",
    }
    for job in jobs:
        volumes = job["spec"]["template"]["spec"]["volumes"]
        names = [v["configMap"]["name"] for v in volumes if "configMap" in v]
        assert files["metadata"]["name"] in names, job["metadata"]["name"]


def test_the_servicemonitor_component_ships_the_dashboard_itself() -> None:
    objects = render("k8s/overlays/example")
    (dashboard,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "healthscore-grafana-dashboard"
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"] == {"healthscore.json": DASHBOARD.read_text()}
    assert "ServiceMonitor" in {o["kind"] for o in objects}


def test_check_sh_passes() -> None:
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    result = subprocess.run(
        ["bash", str(DEPLOY / "check.sh")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    skipped = [line for line in output.splitlines() if "skipped" in line]
    if skipped:
        warnings.warn("deploy/check.sh ran without: " + "; ".join(skipped), stacklevel=1)


# --- the manifests as a platform team reviews them ----------------------------------


def objects_of(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def the_object(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects_of(objects, kind) if o["metadata"]["name"] == name]
    return found


def input_partitions() -> int:
    """INPUT_PARTITIONS of the topics Job: the partitions of each input topic."""
    (topics,) = [
        o
        for o in objects_of(render("k8s/jobs"), "ConfigMap")
        if o["metadata"]["name"].startswith("healthscore-topics-")
    ]
    return int(topics["data"]["INPUT_PARTITIONS"])


def test_every_lag_trigger_reads_the_service_group_as_the_service_connects() -> None:
    """KEDA's lag of each input topic, read from the cluster the service uses, with the
    same security: a trigger left in plaintext against a SASL_SSL cluster fails, and an
    HPA with a failing metric never scales down."""
    from healthscore.config import Settings

    objects = render("k8s/overlays/example")
    config = the_object(objects, "ConfigMap", "healthscore-config")["data"]
    (scaled,) = objects_of(objects, "ScaledObject")
    triggers = [t for t in scaled["spec"]["triggers"] if t["type"] == "kafka"]
    assert sorted(t["metadata"]["topic"] for t in triggers) == sorted(
        Settings(_env_file=None).input_topics
    )
    secured = config["KAFKA_SECURITY_PROTOCOL"] != "PLAINTEXT"
    authentications = {o["metadata"]["name"] for o in objects_of(objects, "TriggerAuthentication")}
    for trigger in triggers:
        topic = trigger["metadata"]["topic"]
        assert trigger["metadata"]["consumerGroup"] == config["CONSUMER_GROUP"], topic
        assert trigger["metadata"]["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"], topic
        reference = trigger.get("authenticationRef", {}).get("name")
        if secured:
            assert reference in authentications, f"{topic}: no authenticationRef on SASL_SSL"
    assert scaled["spec"]["maxReplicaCount"] <= input_partitions()


def pod_templates(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(name, pod template) of every Deployment and Job."""
    return [
        (o["metadata"]["name"], o["spec"]["template"])
        for o in objects
        if o["kind"] in ("Deployment", "Job")
    ]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"a selector this test cannot read: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def scraped_ports(objects: list[dict[str, Any]], template: dict[str, Any]) -> set[tuple[int, str]]:
    """(container port, path) the Prometheus Operator's monitors scrape on these pods."""
    labels = template["metadata"]["labels"]
    ports = {
        p["name"]: p["containerPort"]
        for c in template["spec"]["containers"]
        for p in c.get("ports", [])
    }
    scraped = set()
    for monitor in objects_of(objects, "PodMonitor"):
        if selects(monitor["spec"]["selector"], labels):
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                scraped.add((ports[endpoint["port"]], endpoint.get("path", "/metrics")))
    for monitor in objects_of(objects, "ServiceMonitor"):
        for service in objects_of(objects, "Service"):
            if not selects(monitor["spec"]["selector"], service["metadata"]["labels"]):
                continue
            if not selects({"matchLabels": service["spec"]["selector"]}, labels):
                continue
            for endpoint in monitor["spec"]["endpoints"]:
                (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
                target = port["targetPort"]
                number = ports[target] if isinstance(target, str) else target
                scraped.add((number, endpoint.get("path", "/metrics")))
    return scraped


def test_the_prometheus_operator_scrapes_every_pod_that_exports_metrics() -> None:
    """With components/servicemonitor (the Prometheus Operator instead of the
    prometheus.io annotations), every pod annotated for scraping is scraped on the
    annotated port and path: the read API's alerts (HealthscoreApiErrors) and its
    `up` need its ops port scraped too."""
    objects = render("k8s/overlays/example")
    annotated = {
        name: template
        for name, template in pod_templates(objects)
        if template["metadata"].get("annotations", {}).get("prometheus.io/scrape") == "true"
    }
    assert set(annotated) == {"healthscore", "healthscore-api"}
    for name, template in annotated.items():
        annotations = template["metadata"]["annotations"]
        wanted = (int(annotations["prometheus.io/port"]), annotations["prometheus.io/path"])
        assert scraped_ports(objects, template) == {wanted}, name


# what the ingress controller and kube-proxy may still route to a pod after its
# deletion began (endpoint removal and SIGTERM race; a few seconds in large clusters)
ENDPOINT_PROPAGATION_SECONDS = 5


def pre_stop_seconds(container: dict[str, Any]) -> int:
    """How long a container's preStop hook holds SIGTERM back (0: no hook)."""
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0
    if "sleep" in hook:
        return int(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] in ("sleep", "/bin/sleep") and len(command) == 2, command
    return int(command[1])


def test_the_api_keeps_serving_until_no_one_routes_to_it() -> None:
    """On SIGTERM `healthscore api` closes its listener at once, while the Ingress
    (and kube-proxy) still route new requests to the pod until the endpoint's
    removal reaches them: every rollout or drain would answer those with 502. A
    preStop pause keeps it serving meanwhile, and the grace period leaves the drain
    its time after it."""
    objects = render("k8s")
    api = the_object(objects, "Deployment", "healthscore-api")["spec"]["template"]["spec"]
    (container,) = api["containers"]
    pause = pre_stop_seconds(container)
    assert pause >= ENDPOINT_PROPAGATION_SECONDS
    # the drain after it: requests in flight, each statement within 5 s
    # (API_STATEMENT_TIMEOUT_MS), with room for a few
    assert api["terminationGracePeriodSeconds"] >= pause + 20


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (\"500m\", \"1\", \"320Mi\", \"1G\") as a number."""
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


# README, Performance: "RSS < 300 MB per process" (issue #12), met at 279-293 MB at
# 1M/100k; docs/operations.md, Capacity: "a process ... uses about one core"
SERVICE_PEAK_RSS_BYTES = 300e6
SERVICE_BUSY_CORES = 1.0


def test_the_consumers_request_what_a_replica_was_measured_to_use() -> None:
    """The scheduler places pods by their requests and the kubelet evicts first the
    pods above theirs: a replica that needs 280-300 MB and a core to catch up must
    ask for them, and its limit must leave room above the measured peak."""
    objects = render("k8s")
    spec = the_object(objects, "Deployment", "healthscore")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert quantity(requests["memory"]) >= SERVICE_PEAK_RSS_BYTES
    assert quantity(limits["memory"]) >= 1.5 * SERVICE_PEAK_RSS_BYTES
    assert quantity(requests["cpu"]) >= SERVICE_BUSY_CORES
    # a limit below a core would throttle the one thread that does the work
    assert quantity(limits.get("cpu", "1000")) >= SERVICE_BUSY_CORES


# `healthscore api` under `healthscore api-bench` (100,000 organizations, 50 clients,
# the consumers writing 1,000 events/s), its RSS sampled from /proc: 85 MiB idle after
# start, 111 MiB through every scenario (2,000 organizations' pages kept), 186 MiB
# (190,260 kB) once its response cache reached its byte bound (the organization
# scenarios over 20,000 organizations, API_RESPONSE_CACHE_MEGABYTES at its 64)
API_PEAK_RSS_BYTES = 190_260 * 1024


def test_the_api_requests_what_a_process_was_measured_to_use() -> None:
    """The API keeps answers up to API_RESPONSE_CACHE_MEGABYTES: a process serving
    many distinct pages grows to that bound and stays there. Its request was 128Mi,
    never measured, under what such a process uses: the kubelet evicts first the pods
    above their request when a node runs short."""
    objects = render("k8s")
    spec = the_object(objects, "Deployment", "healthscore-api")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert quantity(requests["memory"]) >= API_PEAK_RSS_BYTES
    assert quantity(limits["memory"]) >= 1.5 * API_PEAK_RSS_BYTES


def peer_name(peer: dict[str, Any]) -> str:
    """A NetworkPolicy peer as a short name: the namespace, an ipBlock's CIDR."""
    if "ipBlock" in peer:
        return str(peer["ipBlock"]["cidr"])
    namespace = str(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
    pods = peer.get("podSelector", {}).get("matchLabels", {})
    return namespace + "".join(f"/{k}={v}" for k, v in sorted(pods.items()))


def allowed(
    policies: list[dict[str, Any]], labels: dict[str, str], direction: str
) -> set[tuple[str, int]] | None:
    """(peer, port) a pod with these labels may reach (egress) or be reached from
    (ingress) under the policies; None: no policy isolates it in that direction."""
    rules_key, peers_key = {"Egress": ("egress", "to"), "Ingress": ("ingress", "from")}[direction]
    isolating = [
        p
        for p in policies
        if direction in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], labels)
    ]
    if not isolating:
        return None
    return {
        (peer_name(peer), int(port["port"]))
        for policy in isolating
        for rule in policy["spec"].get(rules_key, [])
        for peer in rule[peers_key]
        for port in rule["ports"]
    }


def test_each_pod_reaches_only_what_it_talks_to() -> None:
    """The consumers talk to PostgreSQL and the brokers and are scraped; the read API
    talks to PostgreSQL only, takes HTTP from the ingress controller and is scraped on
    its ops port; the migrate Job talks to PostgreSQL, the topics Job to the brokers,
    and nothing connects to either. Policies add up, so a policy selecting every
    healthscore pod gives each what any of them needs."""
    base, jobs = render("k8s"), render("k8s/jobs")
    policies = objects_of(base, "NetworkPolicy") + objects_of(jobs, "NetworkPolicy")
    dns = {("kube-system/k8s-app=kube-dns", 53)}
    postgres, kafka = {("10.0.0.0/8", 5432)}, {("kafka", 9092)}
    wanted = {
        "healthscore": (dns | postgres | kafka, {("monitoring", 8080)}),
        "healthscore-api": (dns | postgres, {("ingress-nginx", 8000), ("monitoring", 8081)}),
        "healthscore-migrate": (dns | postgres, set()),
        "healthscore-topics": (dns | kafka, set()),
    }
    found = {
        name: (
            allowed(policies, template["metadata"]["labels"], "Egress"),
            allowed(policies, template["metadata"]["labels"], "Ingress"),
        )
        for name, template in pod_templates(base) + pod_templates(jobs)
    }
    assert found == wanted


def test_every_pod_runs_unprivileged_on_a_read_only_root() -> None:
    """Every container of the Deployments and Jobs: a non-root user and group, a
    read-only root filesystem, no privilege escalation, no capabilities, the
    runtime's seccomp profile, no service-account token, bounded memory."""
    problems = []
    for name, template in pod_templates(render("k8s")) + pod_templates(render("k8s/jobs")):
        pod = template["spec"]
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: a service-account token is mounted")
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{name}/{container['name']}"
            # the container's settings override the pod's
            security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
            if security.get("runAsNonRoot") is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            for key in ("runAsUser", "runAsGroup"):
                if not security.get(key):
                    problems.append(f"{where}: {key} unset or 0 (the image decides)")
            if security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccomp profile is not RuntimeDefault")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: writable root filesystem")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: privilege escalation allowed")
            if security.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities not all dropped")
            resources = container.get("resources", {})
            if "memory" not in resources.get("requests", {}):
                problems.append(f"{where}: no memory request")
            if "memory" not in resources.get("limits", {}):
                problems.append(f"{where}: no memory limit")
    assert problems == []


def test_the_jobs_run_one_pod_at_a_time_and_end() -> None:
    """A Job's replacement pod starts only once the one before has gone (a pod being
    evicted mid-migration still holds its session until it exits), retries a few
    times, gives up by a deadline instead of waiting on a lock for ever behind a
    deploy that already stopped waiting, and is cleaned up after."""
    for job in objects_of(render("k8s/jobs"), "Job"):
        name, spec = job["metadata"]["name"], job["spec"]
        assert spec.get("parallelism", 1) == 1 and spec.get("completions", 1) == 1, name
        assert spec.get("podReplacementPolicy") == "Failed", name
        assert 0 < spec.get("backoffLimit", 6) <= 5, name
        assert 0 < spec.get("activeDeadlineSeconds", 0) <= 4 * 3600, name
        assert spec.get("ttlSecondsAfterFinished", 0) > 0, name
        assert spec["template"]["spec"]["restartPolicy"] == "Never", name


def test_replicas_spread_over_nodes_and_zones() -> None:
    """A node or a zone lost takes at most its share of the replicas: each Deployment
    spreads its own pods over both (preferred, so a small cluster still schedules)."""
    for deployment in objects_of(render("k8s"), "Deployment"):
        name = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        spread = {
            c["topologyKey"]: c
            for c in template["spec"].get("topologySpreadConstraints", [])
            if selects(c["labelSelector"], template["metadata"]["labels"])
        }
        assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, name
        for constraint in spread.values():
            assert constraint["maxSkew"] == 1, name
            # counted within one rollout's pods, not the old ReplicaSet's too
            assert constraint.get("matchLabelKeys") == ["pod-template-hash"], name


def test_no_secret_reaches_a_command_line() -> None:
    """A process's arguments are readable by every process of the node (ps, /proc,
    agents that collect them); its environment is not. So a container's command and
    args name no variable whose value comes from a Secret, and hold no credentials."""
    problems = []
    for name, template in pod_templates(render("k8s")) + pod_templates(render("k8s/jobs")):
        pod = template["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{name}/{container['name']}"
            secret_variables = {
                variable["name"]
                for variable in container.get("env", [])
                if "secretKeyRef" in variable.get("valueFrom", {})
            }
            words = " ".join(container.get("command", []) + container.get("args", []))
            for variable in secret_variables:
                if re.search(rf"\$\{{?\(?{variable}\b", words):
                    problems.append(f"{where}: ${variable} on the command line")
            if re.search(r"://[^/\s]*:[^/\s]*@|password=", words, re.IGNORECASE):
                problems.append(f"{where}: credentials on the command line")
    assert problems == []


# --- the image (deploy/docker) -------------------------------------------------------

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
IMAGE_LOCK = DEPLOY / "docker" / "requirements.txt"


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's stages, each a list of its instructions (continuations joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def runtime_closure(pins: dict[str, str]) -> tuple[set[str], bool]:
    """Every distribution the service's wheel needs at run time on Linux (its pyproject
    dependencies and theirs, extras followed), read from the metadata installed here;
    and whether that was exact. Below a distribution installed at another version than
    its pin (a fresh CI virtualenv takes the newest) its requirements are not known for
    the pinned version, so they are not followed, and the answer is not exact."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    environment = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"}
    needed: dict[str, set[str]] = {}
    exact = True
    pending = [Requirement(text) for text in project_dependencies()]
    while pending:
        requirement = pending.pop()
        if requirement.marker and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        if name in needed and set(requirement.extras) <= needed[name]:
            continue
        extras = needed.setdefault(name, set())
        extras.update(requirement.extras)
        if pins.get(name) != metadata.version(name):
            exact = False
            continue
        for text in metadata.requires(name) or []:
            child = Requirement(text)
            wanted = [{**environment, "extra": extra} for extra in ("", *sorted(extras))]
            if child.marker is None or any(child.marker.evaluate(e) for e in wanted):
                child.marker = None  # evaluated here, with the parent's extras
                pending.append(child)
    return set(needed), exact


def image_lock() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in IMAGE_LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[\w.]+", version), f"not pinned: {line}"
            pins[canonicalize_name(name)] = version
    return pins


def test_the_image_installs_exactly_the_locked_dependencies() -> None:
    """`pip install` of the wheel alone resolves its dependencies on the day of the
    build: two builds of one commit could run different libraries, none of them the
    ones tested. The image installs a lock, every runtime dependency pinned, without
    resolving anything (--no-deps), and `pip check` fails the build if one is missing."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    final = dockerfile_stages()[-1]
    installs = [i for i in final if re.match(r"RUN\b.*\bpip install\b", i)]
    assert installs, "the final stage installs nothing with pip"
    for install in installs:
        assert "--no-deps" in install and "requirements.txt" in install, install
        assert "pip check" in install, install
    assert IMAGE_LOCK.is_file()
    pins = image_lock()
    closure, exact = runtime_closure(pins)
    assert closure - set(pins) == set(), "not pinned"
    if exact:  # installed as pinned: nothing pinned that the service does not need
        assert set(pins) - closure == set()
    for requirement in map(Requirement, project_dependencies()):
        name = canonicalize_name(requirement.name)
        assert requirement.specifier.contains(pins[name], prereleases=True), requirement


def project_dependencies() -> list[str]:
    """The service's run-time dependencies as pyproject.toml declares them."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def test_the_image_base_is_pinned_and_carries_no_installer() -> None:
    """A floating tag (python:3.11-slim) is a different image every few weeks (another
    Python patch release, and from August 2025 another Debian release): each stage
    names its Python patch version and Debian release. The running image keeps no pip,
    setuptools or wheel (nor ensurepip's bundled copies): nothing installs there."""
    stages = dockerfile_stages()
    for stage in stages:
        image = stage[0].split()[1]
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), (
            stage[0]
        )
    assert len({stage[0].split()[1] for stage in stages}) == 1, "the stages' Pythons differ"
    final = " ".join(dockerfile_stages()[-1])
    assert re.search(r"pip uninstall -y[^&;]*\bpip\b", final), "pip stays in the image"
    for tool in ("setuptools", "wheel"):
        assert re.search(rf"pip uninstall -y[^&;]*\b{tool}\b", final), f"{tool} stays"
    assert "ensurepip/_bundled" in final, "ensurepip's bundled wheels stay"


def test_the_image_healthcheck_judges_whichever_server_the_container_runs() -> None:
    """The image runs the consumer (`serve`, ops port /readyz) or the read API (`api`,
    /api/readyz): a healthcheck of the ops port alone left `docker run IMAGE api`
    unhealthy for good. Its command, run against real local servers."""
    import http.server
    import json as json_module
    import os
    import subprocess
    import sys
    import threading

    from healthscore_lab.devservices import free_port

    [line] = [i for stage in dockerfile_stages() for i in stage if i.startswith("HEALTHCHECK")]
    command = json_module.loads(line[line.index("CMD") + 3 :].strip())
    assert command[:2] == ["python", "-c"]

    def server(path: str, status: int) -> tuple[http.server.HTTPServer, int]:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(status if self.path == path else 404)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return httpd, httpd.server_address[1]

    def healthy(ops_port: int, api_port: int) -> bool:
        environment = {**os.environ, "OPS_PORT": str(ops_port), "API_PORT": str(api_port)}
        run = subprocess.run([sys.executable, "-c", command[2]], env=environment, timeout=30)
        return run.returncode == 0

    ready_consumer, ops = server("/readyz", 200)
    unready_consumer, ops_503 = server("/readyz", 503)
    api_server, api = server("/api/readyz", 200)
    try:
        assert healthy(ops, free_port())  # the consumer, ready
        assert not healthy(ops_503, free_port())  # the consumer, not ready
        assert healthy(free_port(), api)  # `IMAGE api`
        assert not healthy(free_port(), free_port())  # nothing answers
    finally:
        for httpd in (ready_consumer, unready_consumer, api_server):
            httpd.shutdown()


def test_every_disruption_budget_lets_unready_pods_go() -> None:
    """With the default policy (IfHealthyBudget) an unready pod is evicted only while the
    budget is met: the API's pods all unready (PostgreSQL away, a rotated password)
    made every node drain hang on them (review 32c)."""
    budgets = [
        doc
        for path in (ROOT / "deploy" / "k8s").rglob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "PodDisruptionBudget"
    ]
    assert len(budgets) >= 2
    for budget in budgets:
        assert budget["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow", budget


def test_the_consumers_are_annotated_for_scraping_once() -> None:
    """Pods and their Service both annotated: an annotation-based Prometheus (the
    community chart's pod and endpoint jobs) scraped every replica twice, and every sum
    in the rules and the dashboard doubled (review 32c)."""
    scraped = [
        (path.name, doc["kind"])
        for path in (ROOT / "deploy" / "k8s").rglob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict)
        and doc.get("kind") == "Service"
        and "prometheus.io/scrape" in (doc.get("metadata", {}).get("annotations") or {})
    ]
    assert scraped == []


def test_the_service_and_its_jobs_pin_one_image() -> None:
    # the jobs are applied apart (before the service, deleted and applied again on
    # every release), so they carry their own pin: a release that bumps one and not
    # the other migrates with the old image and starts replicas that refuse the
    # unmigrated database (crash-looping, one old pod already gone: maxSurge 0)
    def pins(path: Path) -> dict[str, tuple[str, str]]:
        images = yaml.safe_load(path.read_text()).get("images", [])
        return {i["name"]: (i.get("newName", i["name"]), str(i["newTag"])) for i in images}

    base = pins(DEPLOY / "k8s/base/kustomization.yaml")
    jobs = pins(DEPLOY / "k8s/jobs/kustomization.yaml")
    assert base and base == jobs, (base, jobs)
    # an overlay that sets the tag says where the jobs' is set too
    example = (DEPLOY / "k8s/overlays/example/kustomization.yaml").read_text()
    tags = {tag for _, tag in pins(DEPLOY / "k8s/overlays/example/kustomization.yaml").values()}
    assert tags == {tag for _, tag in base.values()}, tags
    assert "k8s/jobs/kustomization.yaml" in example


def test_a_rollout_waits_longer_than_a_failing_release_takes_to_turn_unready() -> None:
    # minReadySeconds must outlast what `batches` needs to fail (its window, a check
    # round) plus what the probe needs to report it (failureThreshold periods): shorter,
    # and a release failing every batch counts as available and replaces the next replica
    from healthscore.config import Settings
    from healthscore.service.ops.checks import BATCHES_FAILING_UNREADY_SECONDS

    deployment = yaml.safe_load((DEPLOY / "k8s/base/deployment.yaml").read_text())
    spec = deployment["spec"]
    (container,) = [c for c in spec["template"]["spec"]["containers"] if "readinessProbe" in c]
    probe = container["readinessProbe"]
    shows = (
        BATCHES_FAILING_UNREADY_SECONDS
        + Settings().readiness_interval_seconds
        + probe["periodSeconds"] * probe["failureThreshold"]
    )
    assert spec["minReadySeconds"] > shows, (spec["minReadySeconds"], shows)
