"""The topics `serve` creates get the configs of the deployment's topics job.

`deploy/compose/create-topics.sh` is what a deployment runs first; `serve` creates a
topic only when it is missing (a first run without that step, the embedded broker).
Either way the topic is the same: inputs kept forever (replay), dead letters and alerts
30 days, the health feed's tombstones as long as the alerts (review 36a).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from healthscore.config import Settings
from healthscore.service.kafka_admin import topic_configs

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "create-topics.sh"


def _script_configs() -> dict[str, dict[str, str]]:
    """Each `create` line's configs, by the topic it names (loops expanded), with the
    script's defaults: min.insync.replicas, which the service leaves to the cluster,
    aside."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    defaults = dict(re.findall(r"^(\w+)=\$\{\w+:-(.*)\}$", text, re.M))
    configs: dict[str, dict[str, str]] = {}
    loop: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("for t in"):
            loop = [defaults[v] for v in re.findall(r'"\$(\w+)"', line)]
        elif line == "done":
            loop = []
        elif line.startswith("create "):
            words = shlex.split(line)[1:]
            names = loop if words[0] in ("$t", "$t$DLQ_SUFFIX") else [words[0]]
            suffix = defaults["DLQ_SUFFIX"] if words[0].endswith("$DLQ_SUFFIX") else ""
            for name in names:
                name = defaults.get(name.lstrip("$"), name) + suffix
                configs[name] = {
                    key: defaults.get(value.lstrip("$"), value) if value.startswith("$") else value
                    for key, value in (word.split("=", 1) for word in words[2:])
                }
    return configs


def test_serve_creates_the_topics_as_the_topics_job_does() -> None:
    scripted = _script_configs()
    assert len(scripted) == 8, scripted
    assert topic_configs(Settings()) == scripted
