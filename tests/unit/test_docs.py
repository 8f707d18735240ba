"""The operator and developer docs checked against the code they describe.

The on-call engineer and the product teams work from README.md and docs/: a metric,
log line, setting, command, path or link that the code no longer has sends them
looking for nothing. What can be checked mechanically is checked here: every
`healthscore_*` metric the docs name is in a registry, with the type and labels its
table says; every `Healthscore*` alert is a rule of deploy/prometheus/alerts.yml;
every log event the docs name is emitted, and the operations guide's table of log
lines gives each one's level and fields as the code logs them; the README's
configuration table lists every setting with its default; the commands and options
cited exist; every cited file, module and heading link resolves. No services: the
code is read (ast) or built in-process.
"""

from __future__ import annotations

import argparse
import ast
import collections
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"

# the docs people work from (performance.md and score-quality.md are measurement logs;
# their links are still followed: the others point into them)
DOCS = (
    "README.md",
    "docs/operations.md",
    "docs/design.md",
    "docs/architecture.md",
    "docs/read-side.md",
    "deploy/README.md",
)
LINKED_DOCS = (*DOCS, "docs/performance.md", "docs/score-quality.md")

# `healthscore_` names that are no metric: database roles, the lab's package, the
# read model's NOTIFY channels (the prefix, and the fixed channel of old), and the
# example login and database of a replay
NOT_METRICS = {
    "healthscore_owner",
    "healthscore_writer",
    "healthscore_eraser",
    "healthscore_lab",
    "healthscore_read_model_",
    "healthscore_read_model",
    "healthscore_svc",
    "healthscore_v3",
}

# fields structlog binds for the whole of a batch (operations.md, "Logs")
BATCH_CONTEXT_FIELDS = {"batch_first", "batch_records"}

# paths the docs cite that a build or a run makes, not the repository
GENERATED_PATHS = {
    "core/compiled.json",  # the wheel build's digests of the compiled modules
    "test-artifacts/e2e/",  # the browser test's screenshots
    "services/healthscore/api/bench.py",  # cited as where the bench was before it moved
}


def doc_text(name: str) -> str:
    return (ROOT / name).read_text()


def prose(text: str) -> str:
    """The text without fenced code blocks."""
    return re.sub(r"^ *```.*?^ *```", "", text, flags=re.S | re.M)


# --- metrics ------------------------------------------------------------------------


@cache
def registered_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """Every metric the consumer service and the API export: the name as exposed (a
    counter with its `_total`) -> (type, label names)."""
    from healthscore.api.metrics import ApiMetrics
    from healthscore.service.ops.metrics import Metrics

    found: dict[str, tuple[str, frozenset[str]]] = {}
    for holder in (Metrics(), ApiMetrics()):
        for metric in vars(holder).values():
            if isinstance(metric, MetricWrapperBase):
                kind, name = str(metric._type), str(metric._name)
                if kind == "counter":
                    name += "_total"
                found[name] = (kind, frozenset(metric._labelnames))
    return found


def exposed_names() -> set[str]:
    suffixes = {"counter": ("",), "gauge": ("",), "histogram": ("", "_bucket", "_sum", "_count")}
    return {
        name + suffix
        for name, (kind, _) in registered_metrics().items()
        for suffix in suffixes[kind]
    }


def metric_mentions() -> Iterator[tuple[str, str]]:
    """(doc, name) for each `healthscore_...` name the docs write, prefixes included."""
    for doc in DOCS:
        for name in re.findall(r"(?<![\w.-])healthscore_[a-z0-9_]+", doc_text(doc)):
            if name not in NOT_METRICS:
                yield doc, name


def test_every_metric_the_docs_name_is_exported() -> None:
    exposed = exposed_names()
    unknown = set()
    for doc, name in metric_mentions():
        # `healthscore_shadow_*`: a prefix stands for the metrics that start with it
        known = name in exposed or (name.endswith("_") and any(e.startswith(name) for e in exposed))
        if not known:
            unknown.add((doc, name))
    assert unknown == set()


def metric_table_rows() -> Iterator[tuple[str, str, str, set[str]]]:
    """(doc, metric, type, labels) of each metric table row: `| name | type | labels | ...`."""
    # labels may be empty: `| healthscore_ready | gauge | | ... |`
    row = re.compile(r"^\| `(healthscore_\w+)` \| ([a-z]+) \|([^|]*)\|", re.M)
    for doc in DOCS:
        for name, kind, labels in row.findall(doc_text(doc)):
            # a label's values follow it in parentheses: `measure` (`activity`, ...)
            names = re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", labels))
            yield doc, name, kind, set(names)


def test_metric_tables_give_each_metric_its_type_and_labels() -> None:
    rows = list(metric_table_rows())
    assert len(rows) >= 50  # the operations guide's tables were found
    registered = registered_metrics()
    wrong = {}
    for doc, name, kind, labels in rows:
        actual = registered.get(name)
        if actual != (kind, frozenset(labels)):
            wrong[(doc, name)] = {"documented": (kind, sorted(labels)), "code": actual}
    assert wrong == {}


def test_every_row_of_the_operations_guides_metric_tables_is_checked() -> None:
    # a row the pattern above does not read is a row nothing checks
    written = re.findall(r"^\| `healthscore_\w+` \|", doc_text("docs/operations.md"), re.M)
    read = [row for row in metric_table_rows() if row[0] == "docs/operations.md"]
    assert len(read) == len(written)


def test_every_metric_exported_is_named_in_the_operations_guide() -> None:
    guide = doc_text("docs/operations.md")
    unnamed = [
        name
        for name in registered_metrics()
        if re.search(rf"`{name}(?:\{{[^}}`]*\}})?`", guide) is None
    ]
    assert unnamed == []


def test_label_sets_written_after_a_metric_exist() -> None:
    # `healthscore_x{topic,reason}` and `healthscore_x{reason="a|b"}` in the prose
    registered = registered_metrics()
    wrong = {}
    for doc in DOCS:
        for name, selector in re.findall(r"(healthscore_\w+)\{([^}]*)\}", doc_text(doc)):
            labels = set(re.findall(r"(\w+)\s*(?:=~?|!=|,|$)", selector))
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            known = registered.get(name) or registered.get(base)
            if known is None or not labels <= known[1] | {"le"}:
                wrong[(doc, name)] = sorted(labels)
    assert wrong == {}


def test_every_alert_the_docs_name_is_a_rule() -> None:
    rules = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    defined = set(re.findall(r"^\s*- alert: (\w+)$", rules, re.M))
    named = {(doc, a) for doc in DOCS for a in re.findall(r"\bHealthscore[A-Z]\w+", doc_text(doc))}
    assert len(defined) >= 15 and len(named) >= 15
    assert {(doc, a) for doc, a in named if a not in defined} == set()


# --- log events -----------------------------------------------------------------------

LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}
LEVELS = {"exception": "error"}


# a protocol's class attributes naming the log lines it emits (healthscore.http_limits)
PROTOCOL_EVENTS = ("refused_event", "crowded_event")


@cache
def emitted_events() -> dict[str, tuple[str, frozenset[str]]]:
    """Every log event the service and the API emit: name -> (level, field names; `**`
    when some are passed as a mapping). Read from the source: a logger call whose first
    argument is a literal (or a choice of literals), or a protocol's event attribute
    (`PROTOCOL_EVENTS`), each class's value taking the level and fields of the call
    that logs that attribute."""
    events: dict[str, tuple[str, frozenset[str]]] = {}
    named: dict[str, list[str]] = {attribute: [] for attribute in PROTOCOL_EVENTS}
    calls: dict[str, tuple[str, frozenset[str]]] = {}
    for path in (SERVICES / "healthscore").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id in named:
                        assert isinstance(node.value, ast.Constant)
                        named[target.id].append(str(node.value.value))
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and node.args
            ):
                continue
            level = LEVELS.get(node.func.attr, node.func.attr)
            fields = frozenset(k.arg or "**" for k in node.keywords) - {"exc_info"}
            first = node.args[0]
            choices = [first.body, first.orelse] if isinstance(first, ast.IfExp) else [first]
            for choice in choices:
                if isinstance(choice, ast.Constant) and isinstance(choice.value, str):
                    events[choice.value] = (level, fields)
                elif isinstance(choice, ast.Attribute) and choice.attr in named:
                    calls[choice.attr] = (level, fields)
    for attribute, values in named.items():
        assert attribute in calls and values, attribute
        events.update(dict.fromkeys(values, calls[attribute]))
    return events


@cache
def failing_loop_events() -> dict[str, tuple[str, frozenset[str]]]:
    """`<loop>_failed`, which `periodic.every` logs for each background loop the
    service runs (`Loop(interval, step, name, ...)` in service/app.py)."""
    tree = ast.parse((SERVICES / "healthscore" / "service" / "app.py").read_text())
    names = {
        str(node.args[2].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "Loop"
        and len(node.args) >= 3
        and isinstance(node.args[2], ast.Constant)
    }
    periodic = (SERVICES / "healthscore" / "service" / "periodic.py").read_text()
    call = re.search(r'log\.(\w+)\(f"\{name\}_failed", (.*)\)', periodic)
    assert call is not None and len(names) >= 10
    fields = frozenset(re.findall(r"(\w+)=", call.group(2)))
    return {f"{name}_failed": (call.group(1), fields) for name in names}


def all_events() -> dict[str, tuple[str, frozenset[str]]]:
    return {**emitted_events(), **failing_loop_events()}


def without_parentheses(text: str) -> str:
    while True:
        shorter = re.sub(r"\([^()]*\)", "", text)
        if shorter == text:
            return text
        text = shorter


def log_table() -> dict[str, tuple[str, set[str], str]]:
    """operations.md's table of log lines: event -> (level, fields, the row's `when`)."""
    logs = doc_text("docs/operations.md").split("\n## Logs\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in logs.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`[<>\w]+`", cells[0]):
            fields = set(re.findall(r"`(\w+)`", without_parentheses(cells[3])))
            rows[cells[0].strip("`")] = (cells[1], fields, cells[2])
    return rows


def test_the_log_table_gives_each_line_its_level_and_fields() -> None:
    table = log_table()
    assert len(table) >= 30
    events = all_events()
    wrong: dict[str, object] = {}
    for event, (level, fields, when) in table.items():
        if event == "<loop>_failed":
            # the loops it names, each logged by periodic.every
            for named in re.findall(r"`(\w+_failed)`", when):
                if named not in failing_loop_events():
                    wrong[named] = "no such background loop"
            continue
        if event not in events:
            wrong[event] = "never logged"
            continue
        actual_level, actual_fields = events[event]
        documented = fields - BATCH_CONTEXT_FIELDS
        if "**" in actual_fields:  # some fields passed as a mapping: those named must be
            ok = actual_fields - {"**"} <= documented
        else:
            ok = documented == actual_fields
        if level != actual_level or not ok:
            wrong[event] = {
                "documented": (level, sorted(documented)),
                "code": (actual_level, sorted(actual_fields)),
            }
    assert wrong == {}


def test_the_log_table_names_every_loop_that_can_fail() -> None:
    table = log_table()
    named = set(table) | set(re.findall(r"`(\w+_failed)`", table["<loop>_failed"][2]))
    assert set(failing_loop_events()) - named == set()


# lines that are not `serve`'s: the read API's (`api_...`, in "The read API") and
# `healthscore import`'s (in "Profiles")
NOT_SERVE_EVENTS = {"import_page_retried"}


def test_the_log_table_has_a_row_for_every_line_serve_logs() -> None:
    # a line found in the log and not in the table sends the on-call engineer to the code
    table = log_table()
    named = set(table) | set(re.findall(r"`(\w+_failed)`", table["<loop>_failed"][2]))
    serve = {e for e in all_events() if not e.startswith("api_")} - NOT_SERVE_EVENTS
    assert len(serve) >= 40
    assert sorted(serve - named) == []


def test_every_line_logged_is_named_in_the_operations_guide() -> None:
    guide = doc_text("docs/operations.md")
    assert sorted(e for e in all_events() if f"`{e}`" not in guide) == []


# "logs `x`", "logged as `x`", "the `x` log line", ...
_EVENT_NAME = r"([a-z][a-z0-9]*(?:_[a-z0-9]+)+)"
_CITED_EVENT = re.compile(
    rf"(?:\blogs?|logged as|log lines?(?: of)?|lines? of)\s+(?:an?\s+|the\s+)?`{_EVENT_NAME}`"
    rf"|`{_EVENT_NAME}`\s+(?:log\s+)?lines?\b"
)


def test_every_log_line_the_docs_cite_is_emitted() -> None:
    events = all_events()
    cited = {
        (doc, m.group(1) or m.group(2))
        for doc in DOCS
        for m in _CITED_EVENT.finditer(doc_text(doc))
    }
    assert len(cited) >= 20
    assert {(doc, event) for doc, event in cited if event not in events} == set()


# --- settings -----------------------------------------------------------------------


def configuration_table() -> dict[str, str]:
    """README's "Configuration" table: variable -> its default as written."""
    section = doc_text("README.md").split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        names = re.findall(r"`([A-Z0-9_]+)`", cells[0])
        # `OPS_HOST`, `OPS_PORT` | `127.0.0.1`, 8080: one default each, in order
        defaults = [d.strip() for d in cells[1].split(",")] if len(names) > 1 else [cells[1]]
        for i, name in enumerate(names):
            table[name] = defaults[i] if len(defaults) == len(names) else defaults[0]
    return table


def written_default(default: Any) -> str | None:
    """How the table writes a default (None: unset, which the table says in words)."""
    if default is None:
        return None
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, Path):
        return default.name if default.is_absolute() else str(default)
    return str(default)


def test_the_configuration_table_lists_every_setting_with_its_default() -> None:
    from healthscore.config import Settings

    table = configuration_table()
    settings = {name.upper(): field for name, field in Settings.model_fields.items()}
    assert sorted(set(settings) ^ set(table)) == []
    wrong = {}
    for name, field in settings.items():
        written = table[name].replace("`", "")
        expected = written_default(field.default)
        if expected is None:
            ok = written.startswith("unset") or re.fullmatch(r"[A-Z_]+", written) is not None
        elif name.endswith("_TOPIC"):
            ok = written == "contract names"
        else:
            ok = written == expected or written.endswith(" " + expected)  # "bundled x.json"
        if not ok:
            wrong[name] = {"table": table[name], "code": field.default}
    assert wrong == {}


# --- commands -----------------------------------------------------------------------


@cache
def command_options() -> dict[str, frozenset[str]]:
    from healthscore.cli import build_parser

    parser = build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: frozenset(o for action in sub._actions for o in action.option_strings)
        for name, sub in commands.choices.items()
    }


def cited_commands(text: str) -> Iterator[tuple[str, list[str]]]:
    """(command, options) of each `healthscore <command> ...` in backticks or a code block."""
    text = text.replace("\\\n", " ")
    spans = re.findall(r"`([^`\n]+)`", prose(text))
    blocks = re.findall(r"^ *```[a-z]*\n(.*?)^ *```", text, flags=re.S | re.M)
    for span in spans + [line for block in blocks for line in block.splitlines()]:
        for m in re.finditer(r"(?<![\w/.-])healthscore ([a-z][a-z-]*)((?: [^\s|;&#`]+)*)", span):
            yield m.group(1), re.findall(r"(?<![\w-])--[a-z][a-z-]*", m.group(2))


def test_every_command_and_option_the_docs_cite_exists() -> None:
    commands = command_options()
    wrong = set()
    count = 0
    for doc in DOCS:
        for command, options in cited_commands(doc_text(doc)):
            if command in {"apply", "delete", "wait"} and doc == "deploy/README.md":
                continue  # `kubectl -n healthscore apply ...`: the namespace
            count += 1
            if command not in commands:
                wrong.add((doc, command, "no such command"))
            wrong.update((doc, command, o) for o in options if o not in commands[command])
    assert count >= 50
    assert wrong == set()


# --- paths, modules, links ---------------------------------------------------------

LAB_PROJECT = SERVICES / "lab" / "pyproject.toml"
_PATH = re.compile(r"[\w.-]+(?:/[\w.-]+)+/?")
_FILE_SUFFIX = re.compile(r"\.(py|md|sql|yml|yaml|json|toml|txt|sh|html|js|css|example)$")


def cited_paths(doc: str) -> Iterator[str]:
    for span in re.findall(r"`([^`\s]+)`", doc_text(doc)):
        # `../shared/...`: the workspace around the repository, not in a checkout of it
        if "://" in span or span.startswith(("/", "../")) or not _PATH.fullmatch(span):
            continue
        if _FILE_SUFFIX.search(span) or span.endswith("/"):
            yield span


def repository_paths() -> set[str]:
    """Every file and directory of the tree, relative to the root, directories with a
    trailing `/`."""
    skipped = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}
    paths = set()
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT)
        if skipped.isdisjoint(relative.parts):
            paths.add(relative.as_posix() + ("/" if path.is_dir() else ""))
    return paths


def test_every_path_the_docs_cite_exists() -> None:
    # a path may be cited from the root or from a directory the context names
    # (`service/ingest/owned.py`, `ops/routes.py`, deploy/README.md's `k8s/...`): it
    # must then be the end of a path in the tree
    tree = repository_paths()
    missing = set()
    count = 0
    for doc in DOCS:
        for path in cited_paths(doc):
            count += 1
            found = path in tree or any(p.endswith("/" + path) for p in tree)
            if not found and path not in GENERATED_PATHS:
                missing.add((doc, path))
    assert count >= 50
    assert missing == set()


def module_exists(dotted: str) -> bool:
    """`healthscore.store.identity` or `healthscore.store.identity.mint_token`: a module,
    or a name a module's source defines (found without importing anything); or an
    entry point group the distributions declare (`healthscore.commands`)."""
    if re.search(rf'entry-points\."{re.escape(dotted)}"', LAB_PROJECT.read_text()):
        return True
    parts = dotted.split(".")
    root = SERVICES / "lab" if parts[0] == "healthscore_lab" else SERVICES
    for cut in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:cut])
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if source.exists():
            rest = parts[cut:]
            if not rest:
                return True
            return (
                len(rest) == 1
                and re.search(
                    rf"^(?:def|async def|class) {rest[0]}\b|^{rest[0]}\b.*=",
                    source.read_text(),
                    re.M,
                )
                is not None
            )
    return False


def test_every_module_the_docs_cite_exists() -> None:
    cited = {
        (doc, m)
        for doc in DOCS
        for m in re.findall(r"\b(healthscore(?:_lab)?(?:\.[A-Za-z_]\w*)+)", doc_text(doc))
        if not m.endswith((".json", ".md"))  # files: grafana's healthscore.json
    }
    assert len(cited) >= 5
    assert {(doc, m) for doc, m in cited if not module_exists(m)} == set()


def test_classes_and_functions_cited_as_owner_dot_name_exist() -> None:
    # `BatchLog.record`, `BatchEffects.without`: a class or module defining that name
    sources = "\n".join(p.read_text() for p in (SERVICES / "healthscore").rglob("*.py"))
    wrong = set()
    for doc in DOCS:
        for owner, name in re.findall(r"`([A-Z]\w+)\.(_?[a-z]\w*)(?:\(\))?`", doc_text(doc)):
            if not re.search(rf"^class {owner}\b", sources, re.M) or not re.search(
                rf"\bdef {name}\b|^\s+{name}\s*[:=]", sources, re.M
            ):
                wrong.add((doc, f"{owner}.{name}"))
    assert wrong == set()


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a document's headings: lowercase, punctuation other than
    `-` and `_` dropped, spaces to `-`, a repeat numbered `-1`, `-2`, ..."""
    anchors = set()
    seen: collections.Counter[str] = collections.Counter()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", prose(path.read_text()), re.M):
        anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(anchor if not seen[anchor] else f"{anchor}-{seen[anchor]}")
        seen[anchor] += 1
    return anchors


def heading_links(doc: str) -> Iterator[tuple[Path, str]]:
    """(target file, anchor) of every link to a heading: markdown links, and
    `docs/x.md#anchor` written out (paths from the repository root)."""
    path = ROOT / doc
    text = prose(path.read_text())
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        file, _, anchor = target.partition("#")
        if anchor and not re.match(r"[a-z]+:", target):
            yield (path.parent / file if file else path), anchor
    for file, anchor in re.findall(
        r"(?<![\w/(])((?:docs|deploy)/[\w/.-]+\.md|README\.md)#([\w-]+)", text
    ):
        yield ROOT / file, anchor


def test_every_heading_link_resolves() -> None:
    links = [(doc, target, anchor) for doc in LINKED_DOCS for target, anchor in heading_links(doc)]
    assert len(links) >= 50
    broken = {
        (doc, f"{target.relative_to(ROOT) if target.exists() else target}#{anchor}")
        for doc, target, anchor in links
        if not target.exists() or anchor not in heading_anchors(target.resolve())
    }
    assert broken == set()


def test_every_file_link_resolves() -> None:
    broken = set()
    for doc in LINKED_DOCS:
        path = ROOT / doc
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", prose(path.read_text())):
            if not re.match(r"[a-z]+:", target) and not (path.parent / target).exists():
                broken.add((doc, target))
    assert broken == set()


@pytest.mark.parametrize(
    "heading, anchor",
    [
        ("## `healthscore lag`", "healthscore-lag"),
        ("### Migration 0066: the state column", "migration-0066-the-state-column"),
        ("### The read API (`healthscore api`)", "the-read-api-healthscore-api"),
        (
            "### Sixteenth session (2026-12-05): live batches paced",
            "sixteenth-session-2026-12-05-live-batches-paced",
        ),
    ],
)
def test_heading_anchors_follow_githubs_rule(tmp_path: Path, heading: str, anchor: str) -> None:
    page = tmp_path / "page.md"
    page.write_text(f"{heading}\n\n```bash\n# not a heading\n```\n{heading}\n")
    assert heading_anchors(page) == {anchor, f"{anchor}-1"}


# --- the contract for producers: rejection reasons, dead-letter headers ----------------


def all_reasons() -> tuple[str, ...]:
    from healthscore.service.ingest.decode import PIPELINE_REASONS, REASONS

    return REASONS + PIPELINE_REASONS


def test_the_consumer_section_lists_every_rejection_reason() -> None:
    # the README sends producers here for "every code"
    guide = doc_text("docs/operations.md")
    paragraph = guide.split("\n`reason` values: ", 1)[1].split("\n\n", 1)[0]
    # what the parentheses say about a reason names fields, not reasons
    listed = re.findall(r"`(\w+)`", without_parentheses(paragraph))
    assert sorted(listed) == sorted(all_reasons())


def producers_section() -> str:
    return doc_text("README.md").split("\n## For producers", 1)[1].split("\n## ", 1)[0]


def test_the_reasons_the_producers_section_names_exist() -> None:
    section = producers_section()
    examples = re.search(r"a code such as\s+(.*?);", section, re.S)
    assert examples is not None
    named = {
        *re.findall(r"`(\w+)`", examples.group(1)),
        *re.findall(r"rejected as\s+`(\w+)`", section),
        *re.findall(r"\(`(\w+)`\)", section),  # "... (`future_timestamp`)"
        *re.findall(r"`(\w+)` and\s+`\w+` need the stored", section),
        *re.findall(r"`\w+` and\s+`(\w+)` need the stored", section),
    } - set(all_events())  # "(`message_rejected`)": the log line
    assert len(named) >= 10
    assert sorted(named - set(all_reasons())) == []


def header_table() -> list[str]:
    """The dead-letter headers of the operations guide's table, in its order."""
    section = doc_text("docs/operations.md").split("\n## Dead-letter topics\n", 1)[1]
    table = section.split("\n| header | value |\n", 1)[1].split("\n\n", 1)[0]
    return [
        name
        for line in table.splitlines()
        for name in re.findall(r"`(x-[a-z-]+)`", line.split(" | ")[0])
    ]


def test_the_dead_letter_header_table_lists_the_headers_in_their_order() -> None:
    from healthscore.service.ingest.decode import RawRecord, Rejection
    from healthscore.service.ingest.dlq import (
        VALUE_NULL,
        VALUE_OMITTED,
        VALUE_WITHHELD,
        dlq_headers,
    )

    record = RawRecord("product.usage.v1", 0, 7, b"k", b"v", 1, headers=(("trace", b"1"),))
    ours = [name for name, _ in dlq_headers(Rejection(record, "invalid_json", "detail"))][:-1]
    assert header_table() == [*ours, VALUE_OMITTED, VALUE_NULL, VALUE_WITHHELD]


def test_the_headers_the_producers_section_names_exist() -> None:
    from healthscore.service.ingest.dlq import (
        ORIGINAL_PREFIX,
        OWN_HEADERS,
        VALUE_NULL,
        VALUE_OMITTED,
        VALUE_WITHHELD,
    )

    named = set(re.findall(r"`(x-[a-z<>-]+)`", producers_section()))
    assert len(named) >= 8
    known = OWN_HEADERS | {VALUE_OMITTED, VALUE_NULL, VALUE_WITHHELD, ORIGINAL_PREFIX + "<name>"}
    assert sorted(named - known) == []


def test_the_stand_ins_description_is_documented_field_for_field() -> None:
    # an operator or a consumer of the dead-letter topic reads the stand-in's JSON
    tree = ast.parse((SERVICES / "healthscore" / "service" / "ingest" / "dlq.py").read_text())
    (function,) = (
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.AsyncFunctionDef) and n.name == "publish_stand_in"
    )
    (description,) = (n for n in ast.walk(function) if isinstance(n, ast.Dict))
    fields = [k.value for k in description.keys if isinstance(k, ast.Constant)]
    row = next(
        line
        for line in doc_text("docs/operations.md").splitlines()
        if line.startswith("| `x-value-withheld` |")
    )
    described = re.search(r"a JSON object describing the record \(([^)]*)\)", row)
    assert described is not None
    assert re.findall(r"`(\w+)`", described.group(1)) == fields


# --- migrations, the commands table, the quick start ----------------------------------

MIGRATIONS = SERVICES / "healthscore" / "store" / "migrations"


def cited_migrations(text: str) -> set[str]:
    """The numbers of "migration 0066", "migrations 0076 and 0079", "migrations 0050-0068",
    "Migration 0030", "0089's policy" after "migration"."""
    numbers = set()
    for run in re.findall(r"\b[Mm]igrations? ((?:\d{4}(?:,? and |, |-|\b))+)", text):
        numbers.update(re.findall(r"\d{4}", run))
    return numbers


def test_every_migration_the_docs_cite_exists() -> None:
    shipped = {path.name[:4] for path in MIGRATIONS.glob("*.sql")}
    cited = {(doc, n) for doc in DOCS for n in cited_migrations(doc_text(doc))}
    assert len(cited) >= 40
    assert sorted((doc, n) for doc, n in cited if n not in shipped) == []


def test_cited_migrations_reads_each_form() -> None:
    text = "migration 0066, migrations 0076 and 0079, Migrations 0050-0068 any, migration 0031)"
    assert cited_migrations(text) == {"0066", "0076", "0079", "0050", "0068", "0031"}


def test_the_commands_table_lists_every_command_with_options_it_has() -> None:
    section = doc_text("README.md").split("\n## Commands\n", 1)[1].split("\n### ", 1)[0]
    rows = dict(re.findall(r"^\| `healthscore ([a-z-]+)[^`]*` \|(.*)$", section, re.M))
    commands = command_options()
    assert sorted(rows) == sorted(commands)
    wrong = {
        (command, option)
        for command, row in rows.items()
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", row)
        if option not in commands[command]
    }
    assert wrong == set()


def test_the_quick_start_commands_are_what_ci_runs() -> None:
    # "`.ci/run` runs exactly it after the same install"
    quick = doc_text("README.md").split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    install, tests = re.findall(r"^```bash\n(.*?)\n```", quick, re.S | re.M)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install.startswith("pip install -e '.[dev]' && healthscore ")
    assert "pip install --quiet -e '.[dev]'" in ci
    assert tests in ci


def test_the_readiness_table_has_a_row_for_each_check() -> None:
    # the checks are the keys of the mapping service/ops/checks.py builds
    source = ast.parse((SERVICES / "healthscore" / "service" / "ops" / "checks.py").read_text())
    checks = {
        tuple(str(k.value) for k in node.value.keys if isinstance(k, ast.Constant))
        for node in ast.walk(source)
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Dict)
    }
    (names,) = (c for c in checks if "postgres" in c)
    readiness = doc_text("docs/operations.md").split("\n## Readiness\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ", readiness, re.M)
    assert [r for r in rows if not r.startswith("healthscore_")] == list(names)
    gauge = next(
        line for line in readiness.splitlines() if "`healthscore_readiness_check_failed`" in line
    )
    assert re.findall(r"`(\w+)`", gauge.split("(", 1)[1]) == list(names)


def test_every_test_the_docs_name_exists() -> None:
    # `test_stop_in_postgres_outage` (a module) or `test_the_...` (a function): where a
    # claim's evidence is said to be
    tests = ROOT / "tests"
    modules = {path.stem for path in tests.rglob("test_*.py")}
    functions = set(
        re.findall(
            r"^\s*(?:async )?def (test_\w+)",
            "\n".join(p.read_text() for p in tests.rglob("*.py")),
            re.M,
        )
    )
    named = {(doc, n) for doc in DOCS for n in re.findall(r"\b(test_[a-z0-9_]+)\b", doc_text(doc))}
    assert len(named) >= 30
    assert sorted((doc, n) for doc, n in named if n not in modules | functions) == []
