"""The small labelled population the score-quality unit tests share (pure, in memory)."""

from __future__ import annotations

from healthscore_lab.simulator.labelled import reference

SMALL = reference(organizations=60, days=45, seed=101)
