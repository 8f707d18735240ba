"""Fixtures the score-quality unit tests share: the small population and its backtest."""

from __future__ import annotations

import pytest

from healthscore.core.scoring.model import default_model
from healthscore_lab.evaluation.log import from_population
from healthscore_lab.evaluation.replay import Backtest, run_backtest
from healthscore_lab.simulator.labelled import Population, generate_population
from tests.utils.populations import SMALL


@pytest.fixture(scope="module")
def small() -> Population:
    return generate_population(SMALL)


@pytest.fixture(scope="module")
def small_backtest(small: Population) -> Backtest:
    return run_backtest(from_population(small), default_model())
