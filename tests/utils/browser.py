"""Headless Chromium for the dashboard's browser tests (Debian's chromium and
chromium-driver, driven by selenium)."""

from __future__ import annotations

import importlib.util
import shutil
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

BROWSER_TEST = [
    pytest.mark.browser,
    pytest.mark.skipif(
        importlib.util.find_spec("selenium") is None or CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's chromium and chromium-driver packages (.ci/run installs them) "
        "and selenium",
    ),
]
"""The marks of a test module that drives Chromium (`pytestmark = BROWSER_TEST`)."""


def start_chromium(log_performance: bool = False) -> Any:
    """A headless Chromium at 1280x1000 in US English, its console kept (and the
    network's, with `log_performance`); the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    logs = {"browser": "ALL", **({"performance": "ALL"} if log_performance else {})}
    options.set_capability("goog:loggingPrefs", logs)
    driver = webdriver.Chrome(options=options, service=ChromeService(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    return driver
