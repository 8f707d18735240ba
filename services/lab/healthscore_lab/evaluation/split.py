"""The split by organization: which organizations are held out from fitting.

A hash of the organization id, so the split is the same in every run and on
every machine, needs no list, and never puts one organization's days on both
sides (a split by time alone would let the fit see the same customers it is
judged on).
"""

from __future__ import annotations

import hashlib

HELD_OUT_PERCENT = 40
_SALT = b"healthscore-evaluation-split:v1:"


def is_held_out(organization_id: str, percent: int = HELD_OUT_PERCENT) -> bool:
    digest = hashlib.sha256(_SALT + organization_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < percent
