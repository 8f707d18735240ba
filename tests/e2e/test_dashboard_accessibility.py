"""The dashboard against WCAG 2.2 AA in headless Chromium: axe-core on every view and
state a customer-success person meets, and what axe cannot judge by itself.

axe-core is the copy the `selenium-axe-python` wheel bundles (the dev extra installs
it): injected into the page served by the real API over a real database (rows written
as the service writes them, read under row-level security), it is run on each state
reached in sequence in one browser session: signed out, the at-risk list (its filters,
"How far to trust these scores" open, no match, a failed refresh), an organization's
page (chart, its table, factors, path to healthy, milestones, timeline), one with
nothing yet, one not found, the support queue and its empty state, a member's empty
list; the list and an organization with `prefers-contrast: more` and in forced
colours; the list, an organization and the queue at 320 px (400% zoom).
Any violation of impact serious or critical fails the test; no rule is disabled, and
the experimental `label-content-name-mismatch` (WCAG 2.5.3) is enabled.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from healthscore.api.auth import issue_hs256
from healthscore.api.server import serve_until, wait_stopped
from tests.e2e.test_dashboard_browser import contrast, rows, screenshot, wait
from tests.utils import schema_builders as b
from tests.utils.api import JWT_SECRET, api_config, api_login
from tests.utils.browser import BROWSER_TEST

try:
    from selenium.webdriver.chrome.webdriver import WebDriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
except ImportError:  # pragma: no cover - the dev extra installs it; BROWSER_TEST skips
    pass

pytestmark = BROWSER_TEST

NOW = datetime.now(UTC).replace(microsecond=0)
# WCAG 2.0, 2.1 and 2.2, levels A and AA (axe's tags), and axe's best practices
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]
FAILING_IMPACTS = {"serious", "critical"}
# WCAG 1.4.10: 320 CSS px wide is a 1280 px window at 400% zoom
NARROW = {"width": 320, "height": 640, "deviceScaleFactor": 1, "mobile": False}
# WCAG 1.4.12's text spacing, as a user's style sheet sets it
TEXT_SPACING = (
    "const style = document.createElement('style');"
    "style.textContent = '* { line-height: 1.5 !important; letter-spacing: .12em !important;"
    " word-spacing: .16em !important; } p { margin-bottom: 2em !important; }';"
    "document.head.append(style);"
)


def axe_source() -> str:
    """axe-core as the selenium-axe-python wheel ships it (its version in its banner)."""
    return (
        importlib.resources.files("selenium_axe_python")
        .joinpath("axe-core", "axe.min.js")
        .read_text(encoding="utf-8")
    )


@dataclass
class World:
    address: str
    database_url: str
    orgs: dict[str, uuid.UUID]
    users: dict[str, uuid.UUID]

    def link(self, role: str) -> str:
        token = issue_hs256(JWT_SECRET, self.users[role], timedelta(minutes=30))
        return f"{self.address}/#token={token}"


def factor(name: str, impact: float, detail: str) -> dict[str, Any]:
    return {"factor": name, "value": 1.0, "impact": impact, "detail": detail}


# key -> (name, plan, score, churn probability, risk factors): one of each band and
# risk level, so that every badge's colours are on the page
ORGANIZATIONS = {
    "bloom": (
        "Bloom & Vow Weddings",
        "pro",
        "22.00",
        "0.9100",
        [
            factor("inactivity", -20, "No activity for 12 days"),
            factor("open_escalations", -8, "One escalation open"),
            factor("milestones", 2.5, "Onboarding completed"),
        ],
    ),
    "harbor": ("Harbor Lights Events", "starter", "45.00", "0.5500", []),
    "evergreen": ("Evergreen Events", "pro", "70.00", "0.2500", []),
    "sunrise": ("Sunrise Socials", "enterprise", "88.00", "0.0300", []),
}


TIMELINE_INTERACTIONS = 30


async def seed(conn: asyncpg.Connection) -> tuple[dict[str, uuid.UUID], dict[str, uuid.UUID]]:
    orgs: dict[str, uuid.UUID] = {}
    for key, (name, plan, score, churn, factors) in ORGANIZATIONS.items():
        org = b.organization(name=name, plan=plan)
        await b.insert_row(conn, "organizations", org)
        orgs[key] = org["id"]
        await b.insert_row(
            conn,
            "customer_health",
            b.customer_health(
                org["id"],
                health_score=Decimal(score),
                churn_probability=Decimal(churn),
                risk_factors=json.dumps(factors),
                feature_usage=json.dumps({"guest_list": 14, "seating_chart": 3} if factors else {}),
                score_change_7d=Decimal("-4.25") if factors else None,
                score_change_30d=Decimal("2.50") if factors else None,
                scored_at=NOW - timedelta(hours=2),
                last_activity_at=NOW - timedelta(days=3),
            ),
        )
    users: dict[str, uuid.UUID] = {}
    for role, name in (("admin", "Dana Admin"), ("support", "Sam Support"), ("member", "Mo")):
        user = b.user_profile(role=role, full_name=name)
        await b.insert_row(conn, "user_profiles", user)
        users[role] = user["id"]
    bloom = orgs["bloom"]
    complaint = None
    for n, (kind, priority, status, subject, overdue) in enumerate(
        (
            ("complaint", "urgent", "open", "Invoice totals are wrong", True),
            ("technical_support", "high", "open", "Cannot export the guest list", False),
            ("billing_inquiry", "normal", "resolved", "Which plan includes seating?", False),
            ("feature_request", "low", "open", "Dark theme for the planner", False),
        )
    ):
        row = b.support_interaction(
            bloom,
            assigned_to=users["support"],
            subject=subject,
            interaction_type=kind,
            priority=priority,
            status=status,
            sentiment="negative" if overdue else "neutral",
            follow_up_required=True,
            follow_up_at=NOW + (timedelta(days=-1) if overdue else timedelta(days=2)),
            opened_at=NOW - timedelta(days=2, minutes=n),
        )
        await b.insert_row(conn, "support_interactions", row)
        complaint = complaint or row["id"]
    # more than a page (25) of the timeline, all resolved (the queues show open ones)
    for n in range(TIMELINE_INTERACTIONS):
        await b.insert_row(
            conn,
            "support_interactions",
            b.support_interaction(
                orgs["harbor"],
                subject=f"Question {n} about the seating chart",
                status="resolved",
                opened_at=NOW - timedelta(days=5, minutes=n),
            ),
        )
    # one to acknowledge, one acknowledged whose reward is to deliver or decline
    for milestone, reward, acknowledged in (
        ("first_client_added", "badge", False),
        ("clients_10", "discount", True),
    ):
        await b.insert_row(
            conn,
            "success_milestones",
            b.success_milestone(
                bloom,
                milestone_type=milestone,
                reward_type=reward,
                reward_status="pending",
                achieved_at=NOW - timedelta(days=3),
                acknowledged_at=NOW - timedelta(days=1) if acknowledged else None,
                acknowledged_by=users["admin"] if acknowledged else None,
            ),
        )
    for days_ago, past, churn, level in (
        (4, 48, "0.50", "high"),
        (3, 40, "0.62", "high"),
        (2, 31, "0.80", "critical"),
        (1, 22, "0.91", "critical"),
    ):
        await b.insert_row(
            conn,
            "health_score_history",
            b.health_score_history(
                bloom,
                scored_at=NOW - timedelta(days=days_ago),
                health_score=Decimal(past),
                churn_probability=Decimal(churn),
                risk_level=level,
            ),
        )
    path = [
        {"action": f"close complaint {complaint}", "factor": "open_escalations", "impact": 8.0},
        {
            "action": "get each active user logging in regularly",
            "factor": "inactivity",
            "impact": 12.0,
        },
    ]
    await b.insert_row(
        conn,
        "alert_outbox",
        b.alert_outbox(
            bloom,
            payload=json.dumps(
                {
                    "kind": "risk_raised",
                    "risk_level": "critical",
                    "health_score": 22.0,
                    "trigger": "probability_threshold",
                    "path_to_healthy": path,
                }
            ),
        ),
    )
    await conn.execute(
        "INSERT INTO score_quality_summary (score_model_version, backtest, episodes_churned,"
        " episodes_retained, episodes_pending, churners, churners_alerted, lead_days_quartiles)"
        " VALUES ('v4', $1::jsonb, 3, 1, 2, 4, 3, '{5,12.5,20}')",
        json.dumps(
            {
                "source": "fitted on the 2026 export",
                "held_out_organizations": 124,
                "figures": {"auc_30d_churn_probability": 0.93, "recall": 0.8},
            }
        ),
    )
    return orgs, users


@pytest.fixture
async def world(migrated_database: str, pg_admin_url: str) -> AsyncIterator[World]:
    conn = await asyncpg.connect(migrated_database)
    try:
        orgs, users = await seed(conn)
    finally:
        await conn.close()
    stop = asyncio.Event()
    async with api_login(pg_admin_url, migrated_database) as login:
        config = replace(await api_config(migrated_database, login), refresh_seconds=2.0)
        address = (await serve_until(config, "127.0.0.1", 0, stop)).api
        try:
            yield World(address, migrated_database, orgs, users)
        finally:
            stop.set()
            await wait_stopped()


class Audit:
    """axe-core run on each state of the page in turn; its violations, by state."""

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver
        self.source = axe_source()
        self.found: dict[str, list[dict[str, Any]]] = {}

    def check(self, state: str) -> None:
        # a navigation gives a new document, without axe: injected again
        if not self.driver.execute_script("return typeof window.axe === 'object'"):
            self.driver.execute_script(self.source)
        results: dict[str, Any] = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            # after the page's next frame is drawn (its resize observers have run)
            "requestAnimationFrame(() => requestAnimationFrame(() =>"
            " axe.run(document, {runOnly: {type: 'tag', values: arguments[0]},"
            # WCAG 2.5.3 label in name: axe calls it experimental and leaves it out
            " rules: {'label-content-name-mismatch': {enabled: true}}})"
            ".then((r) => done({violations: r.violations, passed: r.passes.length}),"
            " (e) => done({error: String(e)}))));",
            AXE_TAGS,
        )
        assert "error" not in results, results
        # axe judged the page (a run that checked nothing would pass anything)
        assert results["passed"] > 0, state
        self.found[state] = results["violations"]
        screenshot(self.driver, f"a11y-{state}")

    def failures(self) -> list[str]:
        """Each violation of impact serious or critical: the state, the rule, where."""
        return [
            f"{state}: {v['id']} ({v['impact']}) {[' '.join(n['target']) for n in v['nodes']][:5]}"
            f" {v['nodes'][0].get('failureSummary', '')!r}"
            for state, violations in self.found.items()
            for v in violations
            if v["impact"] in FAILING_IMPACTS
        ]


def emulate_media(driver: WebDriver, name: str = "", value: str = "") -> None:
    """Emulates a user preference (`prefers-contrast: more`, `forced-colors: active`), or
    none when `name` is empty."""
    features = [{"name": name, "value": value}] if name else []
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": features})


def org_page_ready(driver: WebDriver) -> bool:
    """The organization's page with its milestones' rows and its timeline drawn."""
    return bool(
        driver.find_elements(By.CSS_SELECTOR, "#milestone-table tbody tr")
        and driver.find_elements(By.CSS_SELECTOR, "#org-timeline li")
    )


async def test_axe_finds_nothing_serious_on_any_view(browser: WebDriver, world: World) -> None:
    run = asyncio.to_thread
    audit = Audit(browser)
    address = world.address

    # --- signed out -------------------------------------------------------------------
    await run(browser.get, f"{address}/")
    await run(wait, browser, lambda d: d.find_element(By.ID, "view-signin").is_displayed())
    await run(audit.check, "sign-in")
    await run(browser.get, f"{address}/#token=forged.token.value")
    await run(wait, browser, lambda d: d.find_element(By.ID, "signin-reason").is_displayed())
    await run(audit.check, "signed-out-saying-why")

    # --- the admin's list: filters, how far to trust the scores, no match, a failure ----
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    await run(wait, browser, lambda d: d.find_element(By.ID, "trust").is_displayed())
    await run(browser.find_element(By.CSS_SELECTOR, "#trust summary").click)
    await run(audit.check, "list")
    await run(Select(browser.find_element(By.ID, "f-band")).select_by_value, "excellent")
    await run(Select(browser.find_element(By.ID, "f-risk")).select_by_value, "critical")
    await run(wait, browser, lambda d: d.find_element(By.ID, "org-empty").is_displayed())
    await run(audit.check, "list-no-match")
    await run(browser.find_element(By.CSS_SELECTOR, "#list-filters button[type=reset]").click)
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    await run(browser.execute_cdp_cmd, "Network.enable", {})
    await run(
        browser.execute_cdp_cmd, "Network.setBlockedURLs", {"urls": ["*/api/v1/organizations*"]}
    )
    await run(wait, browser, lambda d: "Cannot reach" in d.find_element(By.ID, "status").text)
    await run(audit.check, "list-unreachable")
    await run(browser.execute_cdp_cmd, "Network.setBlockedURLs", {"urls": []})

    # --- organizations' pages: everything, nothing yet, not found -----------------------
    await run(browser.get, f"{address}/#/org/{world.orgs['bloom']}")
    await run(wait, browser, org_page_ready)
    await run(browser.find_element(By.CSS_SELECTOR, "#view-org details summary").click)
    await run(audit.check, "organization")
    await run(browser.get, f"{address}/#/org/{world.orgs['sunrise']}")
    await run(wait, browser, lambda d: d.find_element(By.ID, "timeline-empty").is_displayed())
    await run(wait, browser, lambda d: d.find_element(By.ID, "milestone-empty").is_displayed())
    await run(audit.check, "organization-with-nothing-yet")
    await run(browser.get, f"{address}/#/org/{uuid.uuid4()}")
    await run(
        wait, browser, lambda d: d.find_element(By.ID, "org-title").text == "Organization not found"
    )
    await run(audit.check, "organization-not-found")

    # --- support: the queue, and nothing matching -----------------------------------------
    await run(browser.get, world.link("support"))
    await run(wait, browser, lambda d: len(rows(d, "interaction-table", "data-interaction")) == 3)
    await run(audit.check, "support-queue")
    await run(Select(browser.find_element(By.ID, "s-status")).select_by_value, "closed")
    await run(wait, browser, lambda d: d.find_element(By.ID, "interaction-empty").is_displayed())
    await run(audit.check, "support-queue-empty")

    # --- a member: nothing visible -----------------------------------------------------
    await run(browser.get, world.link("member"))
    await run(wait, browser, lambda d: d.find_element(By.ID, "who-role").text == "member")
    await run(wait, browser, lambda d: d.find_element(By.ID, "org-empty").is_displayed())
    await run(audit.check, "member-list-empty")

    # --- the admin's views with more contrast asked for, and in forced colours -----------
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    for name, value in (("prefers-contrast", "more"), ("forced-colors", "active")):
        await run(emulate_media, browser, name, value)
        await run(browser.get, f"{address}/#/")
        await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
        await run(audit.check, f"list-{name}")
        await run(browser.get, f"{address}/#/org/{world.orgs['bloom']}")
        await run(wait, browser, org_page_ready)
        await run(audit.check, f"organization-{name}")
    await run(emulate_media, browser)

    # --- at 400% zoom: the tables' frames scroll ------------------------------------------
    await run(browser.execute_cdp_cmd, "Emulation.setDeviceMetricsOverride", NARROW)
    await run(browser.get, f"{address}/#/")
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    await run(audit.check, "list-320px")
    await run(browser.get, f"{address}/#/org/{world.orgs['bloom']}")
    await run(wait, browser, org_page_ready)
    await run(browser.find_element(By.CSS_SELECTOR, "#view-org details summary").click)
    await run(audit.check, "organization-320px")
    await run(browser.get, world.link("support"))
    await run(wait, browser, lambda d: d.find_element(By.ID, "view-support").is_displayed())
    await run(Select(browser.find_element(By.ID, "s-status")).select_by_value, "open")
    await run(wait, browser, lambda d: len(rows(d, "interaction-table", "data-interaction")) == 3)
    await run(audit.check, "support-queue-320px")
    await run(browser.execute_cdp_cmd, "Emulation.clearDeviceMetricsOverride", {})

    failures = audit.failures()
    assert not failures, "\n".join(failures)


def sticking_out(driver: WebDriver) -> list[str]:
    """What lies right of the window (the page scrolls sideways), outside the frames
    that scroll a wide table by themselves."""
    out: list[str] = driver.execute_script(
        "const width = document.documentElement.clientWidth;"
        "return [...document.querySelectorAll('body *')].filter(e => e.offsetParent"
        " && !e.parentElement.closest('.table-wrap')"
        " && e.getBoundingClientRect().right > width + 1)"
        ".map(e => `${e.tagName}#${e.id}.${e.className} ${e.textContent.trim().slice(0, 30)}`);"
    )
    return out


def lines_of(driver: WebDriver, selector: str) -> dict[str, int]:
    """How many lines each element's text takes, by its text."""
    found: dict[str, int] = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll(arguments[0])].map(e => {"
        " const range = document.createRange(); range.selectNodeContents(e);"
        " const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));"
        " return [e.textContent, tops.size]; }));",
        selector,
    )
    return found


async def test_every_view_reflows_at_400_percent_zoom(browser: WebDriver, world: World) -> None:
    run = asyncio.to_thread
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    await run(browser.execute_cdp_cmd, "Emulation.setDeviceMetricsOverride", NARROW)
    for spacing in (False, True):
        await run(browser.get, f"{world.address}/#/")
        await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
        if spacing:
            browser.execute_script(TEXT_SPACING)
        # the filters wrap inside the window: none is cut off at its right edge
        assert not sticking_out(browser), sticking_out(browser)
        await run(browser.get, f"{world.address}/#/org/{world.orgs['bloom']}")
        await run(wait, browser, org_page_ready)
        if spacing:
            browser.execute_script(TEXT_SPACING)
        await run(screenshot, browser, f"a11y-organization-320px{'-spaced' if spacing else ''}")
        assert not sticking_out(browser), sticking_out(browser)
        # the score card's facts stay readable: a figure is not broken over lines (it
        # was squeezed into a column two letters wide, "+2." above "5")
        facts = lines_of(browser, "#org-facts dd")
        assert facts["+2.5"] == 1 and facts["-4.3"] == 1 and facts["91%"] == 1, facts
        # the chart takes its card's width (the figure's default 40 px margins left it
        # under 200 px, its labels a few pixels high)
        chart, card = browser.execute_script(
            "const svg = document.querySelector('#org-chart svg');"
            "return [svg.getBoundingClientRect().width,"
            " svg.closest('.card').getBoundingClientRect().width];"
        )
        assert chart >= card * 0.85, (chart, card)
        await run(browser.get, f"{world.address}/#/support")
        await run(wait, browser, lambda d: d.find_element(By.ID, "support-updated").text)
        assert not sticking_out(browser), sticking_out(browser)
    # the tables' frames that scroll are tab stops (the arrow keys scroll them), named
    # (the risk factors' no longer scrolls: its words stand under each factor)
    await run(browser.get, f"{world.address}/#/org/{world.orgs['bloom']}")
    await run(wait, browser, org_page_ready)
    milestones = "#milestone-table"
    frame = f"document.querySelector('{milestones}').closest('.table-wrap')"
    await run(wait, browser, lambda d: d.execute_script(f"return {frame}.tabIndex") == 0)
    assert browser.execute_script(f"return {frame}.getAttribute('aria-label')") == "Milestones"
    await run(browser.execute_cdp_cmd, "Emulation.clearDeviceMetricsOverride", {})
    # ... and those that fit are not
    await run(wait, browser, lambda d: d.execute_script(f"return {frame}.tabIndex") == -1)
    assert (
        browser.execute_script("return document.querySelectorAll('[tabindex=\"0\"]').length") == 0
    )


# counts the focus moves, and the list's and the queue's loads, from now on
WATCH_FOCUS = """
window.focusMoves = 0;
document.addEventListener('focusin', () => window.focusMoves++);
window.loads = 0;
const fetched = window.fetch;
window.fetch = (path, ...rest) => {
  if (/^\\/api\\/v1\\/(organizations|interactions)\\?/.test(path)) window.loads++;
  return fetched(path, ...rest);
};
"""


def refreshed(driver: WebDriver, times: int) -> None:
    """Wait until the page has loaded its table `times` more times, and drawn it."""
    start = driver.execute_script("return window.loads")
    wait(driver, lambda d: d.execute_script("return window.loads") >= start + times)
    driver.execute_async_script(
        "const done = arguments[0];"
        "setTimeout(() => requestAnimationFrame(() => requestAnimationFrame(done)), 300)"
    )


async def test_a_refresh_leaves_the_keyboard_focus_alone(browser: WebDriver, world: World) -> None:
    run = asyncio.to_thread
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    browser.execute_script(WATCH_FOCUS)
    # a keyboard user on an organization's link while the list refreshes (every 2 s
    # here): nothing changed, so nothing moves. Focusing it again (a new link in a new
    # row) had a screen reader read the link out again at every refresh.
    link = browser.find_element(By.CSS_SELECTOR, "#org-table tbody tr:nth-child(2) th a")
    browser.execute_script("arguments[0].focus(); window.focusMoves = 0", link)
    await run(refreshed, browser, 2)
    assert browser.execute_script("return document.activeElement") == link
    assert browser.execute_script("return window.focusMoves") == 0
    # its organization rescored: its row is drawn anew, the focus follows it there
    harbor = str(world.orgs["harbor"])
    conn = await asyncpg.connect(world.database_url)
    try:
        await conn.execute(
            "UPDATE customer_health SET health_score = 44 WHERE organization_id = $1",
            world.orgs["harbor"],
        )
    finally:
        await conn.close()
    await run(
        wait,
        browser,
        lambda d: d.execute_script(
            "const e = document.activeElement;"
            "return e.tagName === 'A' && e.closest('tr').dataset.organization === arguments[0]"
            " && e.closest('tr').querySelector('td').textContent === '44.0';",
            harbor,
        ),
    )
    assert browser.execute_script("return window.focusMoves") == 1
    # the same in the queue (everybody's, the organizations' names links for the admin)
    await run(browser.get, f"{world.address}/#/support")
    await run(wait, browser, lambda d: d.find_element(By.ID, "view-support").is_displayed())
    await run(browser.find_element(By.ID, "s-mine").click)
    await run(wait, browser, lambda d: len(rows(d, "interaction-table", "data-interaction")) == 3)
    browser.execute_script(WATCH_FOCUS)
    link = browser.find_element(By.CSS_SELECTOR, "#interaction-table tbody tr td a")
    browser.execute_script("arguments[0].focus(); window.focusMoves = 0", link)
    await run(refreshed, browser, 2)
    assert browser.execute_script("return document.activeElement") == link
    assert browser.execute_script("return window.focusMoves") == 0


def focused(driver: WebDriver) -> str:
    found: str = driver.execute_script(
        "const e = document.activeElement; return `${e.tagName}#${e.id}`;"
    )
    return found


async def test_signed_out_the_focus_goes_to_the_sign_in(browser: WebDriver, world: World) -> None:
    run = asyncio.to_thread
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    # "Sign out" by keyboard: the button disappears with the signed-in header; the focus
    # went with it to the page's start, and a screen reader said nothing of the change
    await run(browser.find_element(By.ID, "sign-out").send_keys, Keys.ENTER)
    await run(wait, browser, lambda d: d.find_element(By.ID, "view-signin").is_displayed())
    assert focused(browser) == "H2#signin-title", focused(browser)
    # signed out by the service mid-session (the token expired): the focus goes to the
    # reason, read out, instead of vanishing with the page's content
    await run(browser.get, world.link("admin"))
    await run(browser.get, f"{world.address}/#/org/{world.orgs['bloom']}")
    await run(wait, browser, org_page_ready)
    browser.find_element(By.CSS_SELECTOR, "#view-org p a").send_keys("")  # the Back link
    expired = issue_hs256(JWT_SECRET, world.users["admin"], timedelta(minutes=-10))
    browser.execute_script("sessionStorage.setItem('healthscore.token', arguments[0])", expired)
    await run(wait, browser, lambda d: d.find_element(By.ID, "signin-reason").is_displayed())
    assert focused(browser) == "P#signin-reason", focused(browser)
    assert "expired" in browser.find_element(By.ID, "signin-reason").text
    # a token pasted into the form and refused: the reason appears above the form the
    # focus is still in (its button), unannounced; the focus goes to it too
    form = browser.find_element(By.ID, "signin-token")
    await run(form.send_keys, "not.a.token")
    await run(browser.find_element(By.CSS_SELECTOR, "#signin-form button").send_keys, Keys.ENTER)
    await run(wait, browser, lambda d: "not a JWT" in d.find_element(By.ID, "signin-reason").text)
    assert focused(browser) == "P#signin-reason", focused(browser)


def status_line(driver: WebDriver) -> str:
    """The status line's text, which a screen reader reads out (role status)."""
    assert driver.find_element(By.ID, "status").get_attribute("role") == "status"
    text: str = driver.find_element(By.ID, "status").text
    return text


async def test_what_a_filter_or_show_more_brought_is_said(browser: WebDriver, world: World) -> None:
    run = asyncio.to_thread
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    # a filter changes the table, which a screen reader does not read: the status line
    # says what it brought (it said nothing)
    await run(Select(browser.find_element(By.ID, "f-band")).select_by_value, "critical")
    await run(wait, browser, lambda d: status_line(d) == "1 organization shown.")
    await run(Select(browser.find_element(By.ID, "f-risk")).select_by_value, "low")
    await run(wait, browser, lambda d: "matches these filters" in status_line(d))
    await run(browser.find_element(By.CSS_SELECTOR, "#list-filters button[type=reset]").click)
    await run(wait, browser, lambda d: status_line(d) == "4 organizations shown.")
    await run(browser.get, f"{world.address}/#/support")
    await run(wait, browser, lambda d: d.find_element(By.ID, "view-support").is_displayed())
    await run(browser.find_element(By.ID, "s-mine").click)
    await run(wait, browser, lambda d: status_line(d) == "3 interactions shown.")
    # "Show older interactions" brings the last page and hides itself: the focus goes
    # to the first interaction it brought (it fell to the page's start)
    await run(browser.get, f"{world.address}/#/org/{world.orgs['harbor']}")
    more = await run(
        wait, browser, lambda d: d.find_element(By.ID, "timeline-more").is_displayed() and d
    )
    await run(more.find_element(By.ID, "timeline-more").send_keys, Keys.ENTER)
    await run(wait, browser, lambda d: not d.find_element(By.ID, "timeline-more").is_displayed())
    await run(
        wait, browser, lambda d: status_line(d) == f"{TIMELINE_INTERACTIONS} interactions shown."
    )
    first_brought = browser.execute_script(
        "return document.querySelectorAll('#org-timeline li')[25] === document.activeElement"
    )
    assert first_brought, focused(browser)


async def test_the_chart_follows_forced_colours(browser: WebDriver, world: World) -> None:
    run = asyncio.to_thread
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    # Windows' high-contrast themes: forced colours, here a dark one (white on black)
    await run(
        browser.execute_cdp_cmd,
        "Emulation.setEmulatedMedia",
        {
            "features": [
                {"name": "forced-colors", "value": "active"},
                {"name": "prefers-color-scheme", "value": "dark"},
            ]
        },
    )
    await run(browser.get, f"{world.address}/#/org/{world.orgs['bloom']}")
    await run(wait, browser, org_page_ready)
    await run(screenshot, browser, "a11y-organization-forced-colours-dark")
    colours = browser.execute_script(
        "const of = (selector, property) => [...document.querySelectorAll(selector)]"
        ".map(e => getComputedStyle(e)[property]);"
        "return {canvas: getComputedStyle(document.documentElement).backgroundColor,"
        " text: getComputedStyle(document.body).color,"
        " labels: of('#org-chart svg text', 'fill'), zones: of('#org-chart .zone', 'fill'),"
        " lines: [...of('#org-chart .line', 'stroke'), ...of('#org-chart .dot', 'fill')]};"
    )
    # the page turns white on black; the chart kept its own colours: pastel bands with
    # grey labels 11 px high (about 1.4:1), a dark blue line: it follows the theme now
    assert set(colours["labels"]) == {colours["text"]}, colours
    assert set(colours["zones"]) == {colours["canvas"]}, colours
    for line in colours["lines"]:
        assert contrast(line, colours["canvas"]) >= 3, (line, colours)


async def test_a_factor_is_filtered_as_the_list_writes_it(browser: WebDriver, world: World) -> None:
    run = asyncio.to_thread
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    # the list says "open escalations" (words); the filter wanted "open_escalations" and
    # refused what the page itself shows with "Please match the requested format."
    factor = browser.find_element(By.ID, "f-factor")
    await run(factor.send_keys, "Open escalations", Keys.ENTER)
    await run(wait, browser, lambda d: status_line(d) == "1 organization shown.")
    assert rows(browser, "org-table", "data-organization") == [str(world.orgs["bloom"])]
    # what it cannot take, it says in words what it takes (WCAG 3.3.3)
    await run(factor.clear)
    await run(factor.send_keys, "logins!", Keys.ENTER)
    message = browser.execute_script("return arguments[0].validationMessage", factor)
    assert "letters, digits" in message.lower(), message
    # Clear takes the refusal away with the text (it stood, and no filter applied)
    await run(browser.find_element(By.CSS_SELECTOR, "#list-filters button[type=reset]").click)
    await run(wait, browser, lambda d: status_line(d) == "4 organizations shown.")
    await run(browser.find_element(By.CSS_SELECTOR, "#list-filters button[type=submit]").click)
    assert browser.execute_script("return arguments[0].validationMessage", factor) == ""


async def test_an_organization_is_found_by_its_name_or_its_id(
    browser: WebDriver, world: World
) -> None:
    run = asyncio.to_thread
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    search = browser.find_element(By.ID, "f-q")
    bloom = str(world.orgs["bloom"])
    # staff know it by its name: its words' starts, in any order, any case ("bloom" was
    # refused: the box took only an id's characters)
    await run(search.send_keys, "VOW blo", Keys.ENTER)
    await run(wait, browser, lambda d: status_line(d) == "1 organization shown.")
    assert rows(browser, "org-table", "data-organization") == [bloom]
    assert browser.execute_script("return arguments[0].validationMessage", search) == ""
    # or by its id, as before
    await run(search.clear)
    await run(search.send_keys, bloom, Keys.ENTER)
    await run(wait, browser, lambda d: rows(d, "org-table", "data-organization") == [bloom])
    # a name nobody has: said so, with the way back
    await run(search.clear)
    await run(search.send_keys, "nowhere gardens", Keys.ENTER)
    await run(wait, browser, lambda d: d.find_element(By.ID, "org-empty").is_displayed())
    assert "matches these filters" in browser.find_element(By.ID, "org-empty").text


async def test_the_updates_can_be_paused(browser: WebDriver, world: World) -> None:
    run = asyncio.to_thread
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    browser.execute_script(WATCH_FOCUS)
    await run(refreshed, browser, 1)
    # WCAG 2.2.2: content that updates by itself can be paused. A screen-reader user
    # reading the list or an organization's page row by row had it redrawn under them
    # every few seconds, with no way to stop it.
    toggle = browser.find_element(By.ID, "auto-update")
    assert toggle.is_selected() and "every 2 s" in toggle.find_element(By.XPATH, "..").text
    await run(toggle.send_keys, Keys.SPACE)  # by keyboard
    loads = browser.execute_script("return window.loads")
    await asyncio.sleep(5)  # two and a half periods
    assert browser.execute_script("return window.loads") == loads
    assert "paused" in browser.find_element(By.ID, "list-updated").text
    # paused on the organization's page too (a navigation does not restart it)
    await run(browser.get, f"{world.address}/#/org/{world.orgs['bloom']}")
    await run(wait, browser, org_page_ready)
    loads = browser.execute_script("return window.loads")
    await asyncio.sleep(5)
    assert browser.execute_script("return window.loads") == loads
    # and resumed at once
    await run(browser.find_element(By.ID, "auto-update").send_keys, Keys.SPACE)
    await run(refreshed, browser, 1)
