"""The headless Chromium the dashboard's browser tests drive (one per test); a module
that needs more of it (the hostile one: the network's log, a watch script) overrides
`browser` with its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.utils.browser import start_chromium


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = start_chromium()
    try:
        yield driver
    finally:
        driver.quit()
