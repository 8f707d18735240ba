"""The dashboard in a real browser, against the real API, database and event stream.

Headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium)
opens the page served by `healthscore.api` while the service consumes a stream:
the admin sees the at-risk organization first, opens it, sees its factors and
chart and its milestone count (those its CRM profile gave it included, without a
row), acknowledges a milestone (persisted, attributed to the admin by the
database); the list refreshes by itself as new scores land; the support person
sees only their interactions; the member sees none. Screenshots are saved under
test-artifacts/e2e/ (or $HEALTHSCORE_TEST_ARTIFACTS).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from healthscore.api.server import dev_config, serve_until, wait_stopped
from healthscore.core.scoring.model import V2_MODEL_PATH
from tests.e2e.test_pipeline_end_to_end import (
    AT_RISK,
    BASE,
    COMPLAINT,
    HEALTHY,
    USERS,
    _id,
    _usage,
    at_risk_support,
    at_risk_usage,
    healthy_events,
)
from tests.utils.browser import BROWSER_TEST
from tests.utils.harness import (
    make_producer,
    make_topics,
    produce_json,
    running_service,
    service_settings,
)
from tests.utils.scenarios import wait_processed

try:
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )

    # Chromium's driver: the DevTools commands and the browser log are its own
    from selenium.webdriver.chrome.webdriver import WebDriver
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # pragma: no cover - the dev extra installs it; BROWSER_TEST skips
    pass

pytestmark = BROWSER_TEST

ARTIFACTS = (
    Path(
        os.environ.get(
            "HEALTHSCORE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"
        )
    )
    / "e2e"
)
LATE_RISK = str(uuid.uuid5(uuid.NAMESPACE_DNS, "late-risk.example"))
OTHER_INTERACTION = str(uuid.uuid5(uuid.NAMESPACE_DNS, "other-support-interaction"))
T = TypeVar("T")


def stream() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    usage = healthy_events() + at_risk_usage()
    # the at-risk organization had onboarded: a milestone to acknowledge
    usage.append(_usage(AT_RISK, "onboarding_completed", BASE - timedelta(days=1), "r-onboard"))
    support = at_risk_support()
    # someone else's interaction, on the healthy organization
    support.append(
        {
            "event_id": _id("o-open"),
            "organization_id": HEALTHY,
            "interaction_id": OTHER_INTERACTION,
            "action": "opened",
            "occurred_at": (BASE + timedelta(days=5)).isoformat(),
            "interaction_type": "training_session",
            "channel": "video",
            "assigned_to": USERS[1],
            "subject": "Training for the new coordinator",
        }
    )
    return usage, support


def crm_profile() -> dict[str, Any]:
    """The at-risk organization's CRM profile: two milestones reached before its events
    reached the service (counted in the score, no row to acknowledge)."""
    before = (BASE - timedelta(days=30)).isoformat()
    return {
        "event_id": _id("r-crm-profile"),
        "organization_id": AT_RISK,
        "milestones": {"profile_completed": before, "integration_connected": before},
        "occurred_at": (BASE + timedelta(days=5)).isoformat(),
    }


def by_day(
    usage: list[dict[str, Any]], support: list[dict[str, Any]]
) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    days = sorted({e["occurred_at"][:10] for e in usage + support})
    return [
        (
            [e for e in usage if e["occurred_at"][:10] == day],
            [e for e in support if e["occurred_at"][:10] == day],
        )
        for day in days
    ]


# more than two of the organization page's pages (25) and the queue's page (50)
LATE_RISK_INTERACTIONS = 60


def late_risk_interactions() -> list[dict[str, Any]]:
    """Many small requests from the late organization: its timeline pages."""
    at = BASE + timedelta(days=6)
    return [
        {
            "event_id": _id(f"l-question-{n}"),
            "organization_id": LATE_RISK,
            "interaction_id": _id(f"l-question-interaction-{n}"),
            "action": "opened",
            "occurred_at": (at + timedelta(minutes=n)).isoformat(),
            "interaction_type": "feedback_survey",
            "channel": "email",
            "subject": f"Question {n} about the invoice layout",
        }
        for n in range(LATE_RISK_INTERACTIONS)
    ]


def late_risk_events() -> list[dict[str, Any]]:
    """An organization that appears while the page is open, straight into high risk."""
    at = BASE + timedelta(days=6)
    return [
        _usage(LATE_RISK, "login", at, "l-login"),
        _usage(LATE_RISK, "data_export_requested", at + timedelta(hours=1), "l-export"),
        _usage(LATE_RISK, "subscription_downgraded", at + timedelta(hours=2), "l-down"),
        _usage(LATE_RISK, "seat_removed", at + timedelta(hours=3), "l-seat"),
    ]


async def name_organizations(database_url: str) -> None:
    """The product's names for the organizations the service knows by id."""
    conn = await asyncpg.connect(database_url)
    try:
        for org, name in ((AT_RISK, "Bloom & Vow Weddings"), (HEALTHY, "Evergreen Events")):
            await conn.execute(
                "UPDATE organizations SET name = $2 WHERE id = $1", uuid.UUID(org), name
            )
    finally:
        await conn.close()


def wait(driver: WebDriver, condition: Callable[[WebDriver], T], timeout: float = 20) -> T:
    try:
        # the page re-renders what it refreshes: an element found a moment ago may be gone
        return WebDriverWait(
            driver,
            timeout,
            poll_frequency=0.2,
            ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
        ).until(condition)
    except TimeoutException:
        screenshot(driver, "timeout")
        raise


def screenshot(driver: WebDriver, name: str) -> Path:
    """The whole page, not only the window (Chromium's DevTools capture)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"captureBeyondViewport": True, "fromSurface": True}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def rows(driver: WebDriver, table: str, attribute: str) -> list[str]:
    # read in one script: the page re-renders rows while it refreshes
    found: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".map(r => r.getAttribute(arguments[1]))",
        f"#{table} tbody tr",
        attribute,
    )
    return found


def timeline_reloaded(driver: WebDriver) -> None:
    """Wait until the organization page's refresh has loaded its timeline twice more (and
    drawn it: the page updates it in place, so no node of it need be replaced)."""
    driver.execute_script(
        "window.timelineLoads = 0; const fetched = window.fetch;"
        "window.fetch = (path, ...rest) => {"
        " if (String(path).startsWith('/api/v1/interactions?')) window.timelineLoads++;"
        " return fetched(path, ...rest); };"
    )
    wait(driver, lambda d: d.execute_script("return window.timelineLoads") >= 2)


def restamped(driver: WebDriver, element_id: str) -> None:
    """Wait until the page's refresh has written its "Updated" line `element_id` again
    (after the rows: a refresh keeps the rows that did not change, so waiting for a
    row to be replaced would wait for ever)."""
    driver.execute_script(
        "window.restamped = false; new MutationObserver(() => { window.restamped = true; })"
        ".observe(document.getElementById(arguments[0]), {childList: true});",
        element_id,
    )
    wait(driver, lambda d: d.execute_script("return window.restamped"))


def contrast(first: str, second: str) -> float:
    """WCAG contrast ratio of two CSS colours given as rgb()/rgba() (opaque)."""

    def luminance(css: str) -> float:
        channels = [int(c) / 255 for c in re.findall(r"\d+", css)[:3]]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(first), luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def js_errors(driver: WebDriver) -> list[str]:
    # selenium leaves get_log unannotated (its entries are dicts of the log's JSON)
    log = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [e["message"] for e in log if e["level"] == "SEVERE"]


async def test_dashboard_in_chromium(
    browser: WebDriver, migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    # v2: the at-risk organization's cancellation request raises an alert at once (as in
    # test_scripted_scenario_end_to_end), so its page has an alert and a path to healthy
    settings = service_settings(
        migrated_database, kafka_bootstrap, topics, model_path=V2_MODEL_PATH
    )
    usage, support = stream()
    producer = await make_producer(kafka_bootstrap)
    stop = asyncio.Event()
    try:
        async with running_service(settings):
            # day by day, so that batches score each day and the chart has a trail
            applied = 0
            for day_usage, day_support in by_day(usage, support):
                await produce_json(producer, topics.usage, day_usage)
                await produce_json(producer, topics.support, day_support)
                applied += len(day_usage) + len(day_support)
                await wait_processed(migrated_database, applied, exactly=True)
            await produce_json(producer, topics.profile, [crm_profile()])
            applied += 1
            await wait_processed(migrated_database, applied, exactly=True)
            await name_organizations(migrated_database)
            config, identity = await dev_config(settings)
            config = dataclasses.replace(config, refresh_seconds=1.0)
            address = (await serve_until(config, "127.0.0.1", 0, stop)).api
            links = identity.links(address)
            run = asyncio.to_thread  # Selenium blocks; the service and the API keep running

            # --- admin: the at-risk organization first ----------------------------------
            await run(browser.get, links["admin"])
            await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) >= 2)
            listed = rows(browser, "org-table", "data-organization")
            assert listed[0] == AT_RISK, listed
            # the token left the address bar (and the history entry) at sign-in
            assert "token" not in browser.current_url, browser.current_url
            assert HEALTHY in listed
            # when each score holds for, in words and with its time zone
            scored = browser.find_element(
                By.CSS_SELECTOR, f'#org-table tr[data-organization="{AT_RISK}"] time'
            )
            assert scored.text.endswith(" ago"), scored.text
            assert "UTC" in scored.find_element(By.XPATH, "..").text
            assert "0 to 100" in browser.find_element(By.ID, "list-meaning").text
            assert "not enough history" in browser.find_element(By.ID, "list-meaning").text
            # no probability is rounded to a certainty (the page's own formatter)
            shown = browser.execute_script("return [pct(0.996), pct(0.004), pct(0), pct(0.42)]")
            assert shown == [">99%", "<1%", "0%", "42%"], shown
            # how far to trust the scores: the live model's test beside its live record
            # (the service's outcome labeller wrote it at start)
            trust = await run(
                wait, browser, lambda d: d.find_element(By.ID, "trust").is_displayed() and d
            )
            await run(browser.find_element(By.CSS_SELECTOR, "#trust summary").click)
            backtest = browser.find_element(By.ID, "trust-backtest").text
            backtest = backtest.replace("\u2068", "").replace("\u2069", "")  # the isolates
            assert backtest.startswith("Before it went live, model v2 was tested on "), backtest
            assert "held out of its fit" in backtest and "false alerts" in backtest, backtest
            assert "Live: " in trust.find_element(By.ID, "trust-live").text
            await run(screenshot, browser, "admin-at-risk-list")

            # the list refreshes by itself when new scores land
            await produce_json(producer, topics.usage, late_risk_events())
            await produce_json(producer, topics.support, late_risk_interactions())
            await run(
                wait,
                browser,
                lambda d: LATE_RISK in rows(d, "org-table", "data-organization"),
                30,
            )
            await run(screenshot, browser, "admin-list-refreshed")

            # the keyboard's focus ring is visible: at least 3:1 against the page (WCAG 1.4.11)
            browser.execute_script("document.getElementById('f-band').focus()")
            await run(ActionChains(browser).send_keys(Keys.TAB).perform)
            ring, page = browser.execute_script(
                "const e = document.activeElement;"
                "return [getComputedStyle(e).outlineColor,"
                " getComputedStyle(e.closest('form')).backgroundColor];"
            )
            assert browser.execute_script("return document.activeElement.id") == "f-risk"
            assert contrast(ring, page) >= 3, (ring, page)

            # the keyboard focus survives the list's refresh: it stays on the organization's
            # link instead of going back to the page's start (a row whose figures changed
            # is re-rendered: test_dashboard_accessibility.py follows the focus there)
            browser.execute_script(
                "document.querySelector(arguments[0]).querySelector('a').focus();",
                f'#org-table tr[data-organization="{AT_RISK}"]',
            )
            await run(restamped, browser, "list-updated")
            focused = browser.execute_script(
                "const e = document.activeElement;"
                "return [e.tagName, e.closest('tr') && e.closest('tr').dataset.organization];"
            )
            assert focused == ["A", AT_RISK], focused

            # open it from the keyboard
            first_link = browser.find_element(
                By.CSS_SELECTOR, f'#org-table tr[data-organization="{AT_RISK}"] a'
            )
            await run(first_link.send_keys, Keys.ENTER)
            await run(
                wait,
                browser,
                lambda d: (
                    d.find_elements(By.CSS_SELECTOR, "#factor-table tbody tr")
                    and d.find_elements(By.CSS_SELECTOR, "#org-chart svg circle")
                ),
            )
            # where the user is: the window's title names the organization, and its heading
            # has the focus (a screen reader reads it; the next Tab starts in the page)
            assert browser.title == "Bloom & Vow Weddings · Customer health", browser.title
            await run(
                wait,
                browser,
                lambda d: d.execute_script("return document.activeElement.id") == "org-title",
            )
            # "Skip to content" skips to the content: it does not navigate to the list
            skip = browser.find_element(By.CSS_SELECTOR, "a.skip")
            browser.execute_script("arguments[0].focus()", skip)
            await run(skip.send_keys, Keys.ENTER)
            await run(
                wait,
                browser,
                lambda d: d.execute_script("return document.activeElement.id") == "org-title",
            )
            assert browser.execute_script("return location.hash") == f"#/org/{AT_RISK}"
            assert browser.find_element(By.ID, "view-org").is_displayed()
            factor_rows = browser.find_elements(By.CSS_SELECTOR, "#factor-table tbody tr")
            assert all(r.text.strip() for r in factor_rows)
            assert browser.find_elements(By.CSS_SELECTOR, "#org-components meter")
            # the numbers explained: what the score is out of, its band, the churn probability
            meaning = browser.find_element(By.ID, "org-score-meaning").text
            assert re.match(
                r"\d+\.\d of 100 is in the (critical|at risk|good|excellent) band", meaning
            ), meaning
            assert "Churn probability" in meaning
            assert "higher is better" in browser.find_element(By.ID, "components-meaning").text
            # the chart's bands are named, not only coloured
            zones = browser.find_elements(By.CSS_SELECTOR, "#org-chart svg text.zone-label")
            assert sorted(z.text for z in zones) == ["at risk", "critical", "excellent", "good"]
            # what to do: under v2 the cancellation request holds the score at its ceiling
            # (40), so the alert names no action: the page says why instead of nothing
            none = await run(wait, browser, lambda d: d.find_elements(By.ID, "org-path-none"))
            assert "a signal only time heals" in none[0].text, none[0].text
            assert not browser.find_elements(By.CSS_SELECTOR, "#org-path li")
            assert "Why it fired" in browser.find_element(By.ID, "org-alert").text
            # the events' time its score holds for, beside when it was decided
            as_of = browser.find_element(
                By.XPATH, "//*[@id='org-alert']//dt[text()='Score as of']/following-sibling::dd[1]"
            ).text
            assert re.search(r"\d{4}.*\(.*ago\)", as_of), as_of
            await run(screenshot, browser, "admin-organization")

            # the score's milestones: the onboarding row below and two from the CRM profile
            await run(
                wait,
                browser,
                lambda d: (
                    d.execute_script(
                        "const dt = [...document.querySelectorAll('#org-facts dt')]"
                        ".find(e => e.textContent === 'Milestones');"
                        "return dt ? dt.nextElementSibling.textContent : null;"
                    )
                    == "3 of 17: 1 recorded (1 to acknowledge) + 2 from the CRM profile"
                ),
            )
            note = browser.find_element(By.ID, "milestone-from-profile")
            assert note.is_displayed() and note.text.startswith("2 more milestones were achieved")

            # acknowledge the milestone
            button = await run(
                wait,
                browser,
                lambda d: d.find_element(
                    By.CSS_SELECTOR,
                    '#milestone-table tr[data-milestone="onboarding_completed"] button',
                ),
            )
            await run(button.send_keys, Keys.ENTER)  # by keyboard
            await run(
                wait,
                browser,
                lambda d: (
                    "Dana Admin"
                    in d.find_element(
                        By.CSS_SELECTOR,
                        '#milestone-table tr[data-milestone="onboarding_completed"] .acknowledged',
                    ).text
                ),
            )
            # the keyboard stays in the row, on its next action (the pending reward)
            label = browser.execute_script(
                "return document.activeElement.getAttribute('aria-label')"
            )
            assert label == "Reward delivered for onboarding completed", label
            await run(screenshot, browser, "admin-milestone-acknowledged")
            conn = await asyncpg.connect(migrated_database)
            try:
                acknowledged_by = await conn.fetchval(
                    "SELECT acknowledged_by FROM success_milestones"
                    " WHERE organization_id = $1 AND milestone_type = 'onboarding_completed'",
                    uuid.UUID(AT_RISK),
                )
            finally:
                await conn.close()
            assert acknowledged_by == identity.users["admin"]
            assert not js_errors(browser), js_errors(browser)

            # a narrow (phone) viewport: the page fits, tables scroll inside their frame
            await run(
                browser.execute_cdp_cmd,
                "Emulation.setDeviceMetricsOverride",
                {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": False},
            )
            await run(browser.refresh)
            await run(
                wait, browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#factor-table tbody tr")
            )
            width, scrolled = browser.execute_script(
                "return [document.documentElement.clientWidth,"
                " document.documentElement.scrollWidth]"
            )
            await run(screenshot, browser, "admin-organization-phone")
            assert scrolled <= width, (scrolled, width)
            await run(browser.execute_cdp_cmd, "Emulation.clearDeviceMetricsOverride", {})

            # hundreds of interactions: the timeline shows a page and pages on
            await run(browser.get, f"{address}/#/org/{LATE_RISK}")
            await run(
                wait, browser, lambda d: d.find_element(By.ID, "timeline-more").is_displayed()
            )
            assert len(browser.find_elements(By.CSS_SELECTOR, "#org-timeline li")) == 25
            # no milestones: said, without an empty table's header row above it
            await run(
                wait, browser, lambda d: d.find_element(By.ID, "milestone-empty").is_displayed()
            )
            assert not browser.find_element(By.ID, "milestone-table").is_displayed()
            await run(browser.find_element(By.ID, "timeline-more").click)
            await run(
                wait,
                browser,
                lambda d: len(d.find_elements(By.CSS_SELECTOR, "#org-timeline li")) == 50,
            )
            await run(browser.find_element(By.ID, "timeline-more").click)
            await run(
                wait,
                browser,
                lambda d: (
                    len(d.find_elements(By.CSS_SELECTOR, "#org-timeline li"))
                    == LATE_RISK_INTERACTIONS
                    and not d.find_element(By.ID, "timeline-more").is_displayed()
                ),
            )
            assert "60 interactions" in browser.find_element(By.ID, "timeline-count").text
            # the page's refresh keeps what "Show older" brought
            await run(timeline_reloaded, browser)
            assert len(browser.find_elements(By.CSS_SELECTOR, "#org-timeline li")) == 60

            # a period whose history cannot be loaded: the choice goes back to the period
            # the chart still shows
            await run(browser.execute_cdp_cmd, "Network.enable", {})
            await run(browser.execute_cdp_cmd, "Network.setBlockedURLs", {"urls": ["*/history*"]})
            await run(Select(browser.find_element(By.ID, "history-days")).select_by_value, "90")
            await run(
                wait,
                browser,
                lambda d: (
                    "Cannot reach" in d.find_element(By.ID, "status").text
                    and d.find_element(By.ID, "history-days").get_attribute("value") == "30"
                ),
            )
            await run(browser.execute_cdp_cmd, "Network.setBlockedURLs", {"urls": []})

            # the queue too: a refresh does not undo "Show more"
            await run(browser.get, f"{address}/#/support")
            await run(browser.find_element(By.ID, "s-mine").click)  # everybody's
            await run(
                wait, browser, lambda d: len(rows(d, "interaction-table", "data-interaction")) == 50
            )
            await run(browser.find_element(By.ID, "interaction-more").click)
            await run(
                wait, browser, lambda d: len(rows(d, "interaction-table", "data-interaction")) > 50
            )
            listed_interactions = len(rows(browser, "interaction-table", "data-interaction"))
            # an organization the admin can see is a link to its page
            link = browser.find_element(
                By.CSS_SELECTOR, f'#interaction-table tr[data-interaction="{COMPLAINT}"] td a'
            )
            assert (link.get_attribute("href") or "").endswith(f"#/org/{AT_RISK}")
            assert link.text == "Bloom & Vow Weddings"
            await run(restamped, browser, "support-updated")
            assert (
                len(rows(browser, "interaction-table", "data-interaction")) == listed_interactions
            )
            await run(browser.find_element(By.ID, "s-mine").click)  # as it was

            # an organization the user may not see: said so, nothing of the last one shown
            await run(browser.get, f"{address}/#/org/{uuid.uuid4()}")
            await run(
                wait,
                browser,
                lambda d: d.find_element(By.ID, "org-title").text == "Organization not found",
            )
            assert not browser.find_element(By.ID, "org-body").is_displayed()
            assert "not visible" in browser.find_element(By.ID, "org-subtitle").text.replace(
                "is visible to you", "not visible"
            )
            await run(screenshot, browser, "admin-organization-not-found")

            # the service unreachable mid-session: said in words, with the age of what is shown
            await run(browser.get, f"{address}/#/")
            await run(wait, browser, lambda d: rows(d, "org-table", "data-organization"))
            await run(browser.execute_cdp_cmd, "Network.enable", {})
            await run(
                browser.execute_cdp_cmd,
                "Network.setBlockedURLs",
                {"urls": ["*/api/v1/organizations*"]},
            )
            await run(
                wait,
                browser,
                lambda d: "Cannot reach the health service" in d.find_element(By.ID, "status").text,
            )
            assert "What you see was loaded at" in browser.find_element(By.ID, "status").text
            assert rows(browser, "org-table", "data-organization")  # the last answer stays
            # the refreshes failing again do not re-announce the same message (a live region)
            browser.execute_script(
                "window.statusChanges = 0; window.refreshes = 0;"
                "new MutationObserver(() => window.statusChanges++)"
                ".observe(document.getElementById('status'), {childList: true, subtree: true,"
                " characterData: true});"
                "const fetched = window.fetch;"
                "window.fetch = (...a) => { window.refreshes++; return fetched(...a); };"
            )
            await run(wait, browser, lambda d: d.execute_script("return window.refreshes") >= 3)
            assert browser.execute_script("return window.statusChanges") == 0
            await run(screenshot, browser, "admin-list-service-unreachable")
            await run(browser.execute_cdp_cmd, "Network.setBlockedURLs", {"urls": []})
            await run(wait, browser, lambda d: d.find_element(By.ID, "status").text == "")

            # a request the database takes too long over (a 503 too-slow): what to do
            conn = await asyncpg.connect(migrated_database)
            try:
                async with conn.transaction():
                    await conn.execute("LOCK TABLE customer_health IN ACCESS EXCLUSIVE MODE")
                    band = Select(browser.find_element(By.ID, "f-band"))
                    await run(band.select_by_value, "critical")
                    await run(
                        wait,
                        browser,
                        lambda d: "took too long" in d.find_element(By.ID, "status").text,
                        30,
                    )
            finally:
                await conn.close()
            status = browser.find_element(By.ID, "status").text
            assert "API_STATEMENT_TIMEOUT_MS" not in status
            # the unfiltered rows do not stand under the filter they were not loaded for
            assert rows(browser, "org-table", "data-organization") == []
            assert "What you see" not in status and "tries again" in status, status
            await run(screenshot, browser, "admin-list-too-slow")
            # the lock gone, the next answer replaces the message with what it brought
            await run(Select(browser.find_element(By.ID, "f-band")).select_by_value, "")
            await run(
                wait,
                browser,
                lambda d: d.find_element(By.ID, "status").text.endswith("organizations shown."),
            )
            assert "problem" not in (
                browser.find_element(By.ID, "status").get_attribute("class") or ""
            )
            await run(wait, browser, lambda d: rows(d, "org-table", "data-organization"))
            assert browser.find_element(By.ID, "org-table").is_displayed()
            # only the failed requests themselves are logged, no script error
            assert not [e for e in js_errors(browser) if "/api/v1/" not in e], js_errors(browser)

            # --- support: their interactions only -----------------------------------------
            await run(browser.get, links["support"])
            await run(
                wait,
                browser,
                lambda d: (
                    d.find_element(By.ID, "view-support").is_displayed()
                    and rows(d, "interaction-table", "data-interaction")
                ),
            )
            assert rows(browser, "interaction-table", "data-interaction") == [COMPLAINT]
            # its follow-up is overdue: said beside the subject, not by the row's colour alone
            subject = browser.find_element(
                By.CSS_SELECTOR, f'#interaction-table tr[data-interaction="{COMPLAINT}"] th'
            )
            assert "Follow-up overdue" in subject.text, subject.text
            await run(screenshot, browser, "support-queue")
            search = browser.find_element(By.ID, "s-q")
            await run(search.send_keys, "invoice totals", Keys.ENTER)
            await run(
                wait,
                browser,
                lambda d: rows(d, "interaction-table", "data-interaction") == [COMPLAINT],
            )
            # the organization list shows nothing to support staff
            await run(browser.get, f"{address}/#/")
            await run(wait, browser, lambda d: d.find_element(By.ID, "org-empty").is_displayed())
            # nor the figures about the scores they do not see
            assert not browser.find_element(By.ID, "trust").is_displayed()
            assert browser.find_element(By.ID, "trust-backtest").get_attribute("textContent") == ""

            # --- member: nothing ------------------------------------------------------------
            await run(browser.get, links["member"])
            # the support view's empty list is still shown until the member's sign-in
            # lands (a link that differs in its fragment does not reload the page)
            await run(wait, browser, lambda d: d.find_element(By.ID, "who-role").text == "member")
            await run(wait, browser, lambda d: d.find_element(By.ID, "org-empty").is_displayed())
            assert rows(browser, "org-table", "data-organization") == []
            # why it is empty (the role, not a filter), without an empty table above it
            assert "your role (member)" in browser.find_element(By.ID, "org-empty").text
            assert not browser.find_element(By.ID, "org-table").is_displayed()
            await run(screenshot, browser, "member-sees-nothing")

            # --- no token: the sign-in page, and 401 for a forged one ---------------------------
            await run(browser.get, f"{address}/#token=forged.token.value")
            await run(wait, browser, lambda d: d.find_element(By.ID, "view-signin").is_displayed())
            assert "Signed out" in browser.find_element(By.ID, "signin-reason").text
            await run(screenshot, browser, "signed-out")

            # the token expires on an organization's page: signed out, saying so, and the
            # next sign-in comes back to that page
            await run(browser.get, links["admin"])
            await run(wait, browser, lambda d: rows(d, "org-table", "data-organization"))
            await run(browser.get, f"{address}/#/org/{AT_RISK}")
            await run(wait, browser, lambda d: d.find_element(By.ID, "org-body").is_displayed())
            expired = identity.token("admin", valid_for=timedelta(minutes=-10))
            browser.execute_script(
                "sessionStorage.setItem('healthscore.token', arguments[0])", expired
            )
            await run(
                wait,
                browser,
                lambda d: "expired" in d.find_element(By.ID, "signin-reason").text,
            )
            assert "Sign in again" in browser.find_element(By.ID, "signin-reason").text
            await run(browser.get, links["admin"])
            await run(
                wait,
                browser,
                lambda d: (
                    d.execute_script("return location.hash") == f"#/org/{AT_RISK}"
                    and d.find_element(By.ID, "org-body").is_displayed()
                ),
            )
    finally:
        stop.set()
        await wait_stopped()
        await producer.stop()
