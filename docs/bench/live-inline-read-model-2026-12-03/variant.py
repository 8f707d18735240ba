"""Experiment only (docs/performance.md, "Tenth session"): `healthscore serve` with ServiceOptions
changed by the VARIANT environment variable, for `healthscore bench --service-command`.

VARIANT=nofeed: the default service without the health feed (the projector on).
VARIANT=inline: the read model written in each batch's transaction (no projector, no
feed), as the naive baseline writes it.
"""

import os
import sys
from typing import Any

import healthscore.service.app as app
from healthscore.cli import main

_options = app.ServiceOptions
_changes: dict[str, dict[str, bool]] = {
    "nofeed": {"publish_health": False},
    "inline": {"read_model_in_transaction": True, "publish_health": False},
}
_change = _changes[os.environ["VARIANT"]]


def _changed(**fields: Any) -> app.ServiceOptions:
    return _options(**{**fields, **_change})


app.ServiceOptions = _changed  # type: ignore[misc,assignment]
sys.exit(main(["serve", *sys.argv[1:]]))
