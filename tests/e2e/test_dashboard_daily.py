"""The dashboard as customer-success staff use it all day, with a keyboard, a mouse and
a screen reader, in headless Chromium against the real API over a real database (rows
written as the service writes them, read under row-level security; the world of
test_dashboard_accessibility.py): a long name or subject shown whole from the keyboard;
an organization's page refreshed in place, with what the user was doing in it kept;
back from an organization, the focus on the row it was opened from; "Show more" showing
an organization rescored meanwhile once; its milestones kept
up to date with the facts that count them; a filter typed and not applied left alone
by the refreshes; an organization's page and the queue say when they were loaded and
whether they update; a reward a colleague recorded meanwhile shown as it is, not offered
again; a long name opened in the list stays open, and focused, when its row changes;
the header's long user name shown whole from the keyboard; each "Show all" named after
its text; no refresh in a hidden tab; the risk factors in words, readable at 400% zoom
and summed only when they add up; the last alert's interaction linked, a recovery's
card without a way out of risk.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import timedelta
from decimal import Decimal

import asyncpg

from tests.e2e.test_dashboard_accessibility import (  # noqa: F401
    NARROW,
    NOW,
    TEXT_SPACING,
    WATCH_FOCUS,
    World,
    org_page_ready,
    world,
)
from tests.e2e.test_dashboard_browser import restamped, rows, screenshot, wait
from tests.utils import schema_builders as b
from tests.utils.browser import BROWSER_TEST

try:
    from selenium.webdriver.chrome.webdriver import WebDriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import Select
except ImportError:  # pragma: no cover - the dev extra installs it; BROWSER_TEST skips
    pass

pytestmark = BROWSER_TEST

LONG_NAME = "Harbor Lights Events and Celebrations " * 8 + "of the Northern Coast (its end)"
LONG_SUBJECT = (
    "The seating chart export drops the guests' dietary notes " * 12 + "since Tuesday (its end)"
)


async def lengthen(world: World) -> tuple[str, str]:  # noqa: F811
    """An organization with a long name, at risk, and an interaction with a long subject
    on it, open and assigned to the support person: their ids."""
    conn = await asyncpg.connect(world.database_url)
    try:
        org = b.organization(name=LONG_NAME, plan="pro")
        await b.insert_row(conn, "organizations", org)
        await b.insert_row(
            conn,
            "customer_health",
            b.customer_health(
                org["id"],
                health_score=Decimal("30.00"),
                churn_probability=Decimal("0.8000"),
                scored_at=NOW - timedelta(hours=1),
                last_activity_at=NOW - timedelta(days=2),
            ),
        )
        interaction = b.support_interaction(
            org["id"],
            subject=LONG_SUBJECT,
            assigned_to=world.users["support"],
            opened_at=NOW - timedelta(hours=3),
        )
        await b.insert_row(conn, "support_interactions", interaction)
    finally:
        await conn.close()
    return str(org["id"]), str(interaction["id"])


def whole(driver: WebDriver, text: WebElement) -> bool:
    """The element's whole text is in view: its box is as tall as its text."""
    shown: bool = driver.execute_script(
        "return arguments[0].scrollHeight <= arguments[0].clientHeight + 1", text
    )
    return shown


def shown_whole_by_keyboard(driver: WebDriver, text: WebElement) -> None:
    """`text` is cut, with no tooltip (which no keyboard opens); the next Tab reaches its
    "Show all" button, which Enter turns into "Show less" over the whole text."""
    assert text.get_dom_attribute("title") is None
    assert not whole(driver, text)
    # the keyboard's next stop after the text (or after the page's focus, when the text
    # itself is no tab stop)
    driver.execute_script(
        "const t = arguments[0]; if (t.matches('a')) t.focus();"
        " else { t.tabIndex = -1; t.focus(); t.removeAttribute('tabindex'); }",
        text,
    )
    text.parent.switch_to.active_element.send_keys(Keys.TAB)
    toggle = driver.switch_to.active_element
    assert toggle.text == "Show all", (toggle.tag_name, toggle.text)
    assert toggle.get_attribute("aria-expanded") == "false"
    toggle.send_keys(Keys.ENTER)
    wait(driver, lambda d: whole(d, text))
    assert driver.switch_to.active_element == toggle
    assert toggle.text == "Show less" and toggle.get_attribute("aria-expanded") == "true"
    # and cut again
    toggle.send_keys(Keys.ENTER)
    wait(driver, lambda d: not whole(d, text))
    assert toggle.text == "Show all"


async def test_a_long_name_or_subject_is_shown_whole_from_the_keyboard(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    run = asyncio.to_thread
    org, interaction = await lengthen(world)
    # the at-risk list: the organization's name, a link, cut to three lines with the
    # rest in a title tooltip that no keyboard could open (WCAG 2.1.1, 1.4.13)
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 5)
    link = browser.find_element(By.CSS_SELECTOR, f'#org-table tr[data-organization="{org}"] a')
    await run(wait, browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#org-table .more-text"))
    await run(shown_whole_by_keyboard, browser, link)
    # a short name is not cut: no button for it
    assert len(browser.find_elements(By.CSS_SELECTOR, "#org-table .more-text")) == 1
    await run(screenshot, browser, "daily-long-name-list")
    # the organization's page: its heading, and the subject in its timeline
    await run(browser.get, f"{world.address}/#/org/{org}")
    await run(wait, browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#org-timeline li"))
    await run(wait, browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".more-text")) == 2)
    await run(shown_whole_by_keyboard, browser, browser.find_element(By.ID, "org-title"))
    subject = browser.find_element(By.CSS_SELECTOR, "#org-timeline li strong")
    await run(shown_whole_by_keyboard, browser, subject)
    # the queue (everybody's): the subject and the organization's name
    await run(browser.get, f"{world.address}/#/support")
    await run(wait, browser, lambda d: d.find_element(By.ID, "view-support").is_displayed())
    await run(browser.find_element(By.ID, "s-mine").click)
    await run(
        wait, browser, lambda d: interaction in rows(d, "interaction-table", "data-interaction")
    )
    row = f'#interaction-table tr[data-interaction="{interaction}"]'
    await run(wait, browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".more-text")) == 2)
    await run(
        shown_whole_by_keyboard, browser, browser.find_element(By.CSS_SELECTOR, f"{row} th span")
    )
    await run(
        shown_whole_by_keyboard, browser, browser.find_element(By.CSS_SELECTOR, f"{row} td a")
    )
    assert not uncut_or_unreachable(browser)
    # at 400% zoom more is cut: each cut text has its button as the window narrows
    await run(
        browser.execute_cdp_cmd,
        "Emulation.setDeviceMetricsOverride",
        {"width": 320, "height": 640, "deviceScaleFactor": 1, "mobile": False},
    )
    await run(wait, browser, lambda d: not uncut_or_unreachable(d))
    await run(screenshot, browser, "daily-long-subject-queue-320px")
    await run(browser.execute_cdp_cmd, "Emulation.clearDeviceMetricsOverride", {})


def uncut_or_unreachable(driver: WebDriver) -> list[str]:
    """The texts on view that are cut without a "Show all" button after them, or that
    have one and are not cut."""
    found: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('.clamp')].filter(t => t.offsetParent).filter(t => {"
        " const cut = t.scrollHeight > t.clientHeight + 1;"
        " const toggle = !!t.nextElementSibling && t.nextElementSibling.matches('.more-text');"
        " return cut !== toggle && !t.hasAttribute('data-expanded');"
        "}).map(t => `${t.textContent.slice(0, 40)} ${t.scrollHeight}/${t.clientHeight}`"
        " + ` ${t.nextElementSibling && t.nextElementSibling.className}`);"
    )
    return found


async def test_a_refresh_keeps_what_the_user_was_doing_on_an_organization(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    run = asyncio.to_thread
    bloom = world.orgs["bloom"]
    conn = await asyncpg.connect(world.database_url)
    try:
        await b.insert_row(
            conn,
            "support_interactions",
            b.support_interaction(bloom, subject=LONG_SUBJECT, opened_at=NOW - timedelta(hours=1)),
        )
    finally:
        await conn.close()
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    await run(browser.get, f"{world.address}/#/org/{bloom}")
    await run(wait, browser, org_page_ready)
    await run(wait, browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#org-timeline .more-text"))
    browser.execute_script(WATCH_FOCUS)
    # a user reading the long subject: opened it ("Show all", by keyboard), the history's
    # table open, a risk factor's words selected to copy, the page scrolled to the
    # timeline; the page refreshes every 2 s here
    await run(browser.find_element(By.CSS_SELECTOR, "#view-org details summary").click)
    toggle = browser.find_element(By.CSS_SELECTOR, "#org-timeline .more-text")
    browser.execute_script(
        "window.toggle = arguments[0]; arguments[0].focus(); window.focusMoves = 0", toggle
    )
    await run(toggle.send_keys, Keys.ENTER)
    assert toggle.get_attribute("aria-expanded") == "true"
    browser.execute_script(
        "const detail = document.querySelector('#factor-table tbody td .clamp');"
        "window.getSelection().selectAllChildren(detail);"
        "arguments[0].scrollIntoView({block: 'center'});"
        "window.scrolledTo = window.scrollY;",
        toggle,
    )
    selected = browser.execute_script("return window.getSelection().toString()")
    assert selected == "No activity for 12 days", selected
    # the organization rescored (as the projector writes it): the new figure is shown
    conn = await asyncpg.connect(world.database_url)
    try:
        await conn.execute(
            "UPDATE customer_health SET health_score = 19, active_users_30d = 2"
            " WHERE organization_id = $1",
            bloom,
        )
    finally:
        await conn.close()
    await run(wait, browser, lambda d: d.find_element(By.ID, "org-score").text == "19.0")
    await run(
        wait,
        browser,
        lambda d: "19.0 of 100" in d.find_element(By.ID, "org-score-meaning").text,
    )
    # ... and the rest is as the user left it: the focus on the same button (never moved),
    # the subject still whole, the table still open, the words still selected, the page
    # where it was
    kept = browser.execute_script(
        "const toggle = window.toggle;"
        "return {focused: document.activeElement === toggle, connected: toggle.isConnected,"
        " expanded: toggle.getAttribute('aria-expanded'), moves: window.focusMoves,"
        " open: document.querySelector('#view-org details').open,"
        " selected: window.getSelection().toString(),"
        " scrolled: Math.abs(window.scrollY - window.scrolledTo)};"
    )
    assert kept == {
        "focused": True,
        "connected": True,
        "expanded": "true",
        "moves": 0,
        "open": True,
        "selected": "No activity for 12 days",
        "scrolled": 0,
    }, kept
    assert whole(browser, browser.find_element(By.CSS_SELECTOR, "#org-timeline li strong"))
    active = browser.execute_script(
        "const dt = [...document.querySelectorAll('#org-facts dt')]"
        ".find(e => e.textContent === 'Active users (30 days)');"
        "return dt.nextElementSibling.textContent;"
    )
    assert active == "2", active
    await run(screenshot, browser, "daily-organization-refreshed-in-place")


# more than a page (50) of the list, after the four of the world (the least at risk)
QUIET_ORGANIZATIONS = 55


async def add_quiet_organizations(world: World) -> list[str]:  # noqa: F811
    conn = await asyncpg.connect(world.database_url)
    try:
        ids = []
        for n in range(QUIET_ORGANIZATIONS):
            org = b.organization(name=f"Quiet Gardens {n:02d}")
            await b.insert_row(conn, "organizations", org)
            await b.insert_row(
                conn,
                "customer_health",
                b.customer_health(
                    org["id"],
                    health_score=Decimal("85.00"),
                    churn_probability=Decimal("0.0100"),
                    scored_at=NOW - timedelta(hours=2),
                ),
            )
            ids.append(str(org["id"]))
    finally:
        await conn.close()
    return ids


def focused_row(driver: WebDriver) -> list[str | None]:
    """The focused element's tag and the organization of its row (None outside rows)."""
    found: list[str | None] = driver.execute_script(
        "const e = document.activeElement;"
        "return [e.tagName, e.closest('tr') && e.closest('tr').dataset.organization];"
    )
    return found


async def test_back_from_an_organization_the_focus_is_on_its_row(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    run = asyncio.to_thread
    quiet = await add_quiet_organizations(world)
    total = len(world.orgs) + QUIET_ORGANIZATIONS
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 50)
    # a user down the list ("Show more"), opening one of the last organizations by keyboard
    await run(browser.find_element(By.ID, "org-more").send_keys, Keys.ENTER)
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == total)
    last = rows(browser, "org-table", "data-organization")[-1]
    assert last in quiet
    link = browser.find_element(By.CSS_SELECTOR, f'#org-table tr[data-organization="{last}"] a')
    await run(link.send_keys, Keys.ENTER)
    await run(
        wait, browser, lambda d: d.execute_script("return document.activeElement.id") == "org-title"
    )
    # back by the page's link: the focus on the organization's link in its row (it went to
    # the list's heading, the list cut back to its first page, that row gone)
    await run(browser.find_element(By.CSS_SELECTOR, "#view-org p a").send_keys, Keys.ENTER)
    await run(wait, browser, lambda d: focused_row(d) == ["A", last])
    assert len(rows(browser, "org-table", "data-organization")) == total
    # and by the browser's Back, from an organization near the top
    harbor = str(world.orgs["harbor"])
    link = browser.find_element(By.CSS_SELECTOR, f'#org-table tr[data-organization="{harbor}"] a')
    await run(link.send_keys, Keys.ENTER)
    await run(wait, browser, lambda d: d.find_element(By.ID, "org-body").is_displayed())
    await run(browser.back)
    await run(wait, browser, lambda d: focused_row(d) == ["A", harbor])
    # an organization that left the filtered list while it was open: said so, the focus
    # at the list's heading
    await run(Select(browser.find_element(By.ID, "f-band")).select_by_value, "critical")
    await run(
        wait,
        browser,
        lambda d: rows(d, "org-table", "data-organization") == [str(world.orgs["bloom"])],
    )
    link = browser.find_element(By.CSS_SELECTOR, "#org-table tbody a")
    await run(link.send_keys, Keys.ENTER)
    await run(wait, browser, lambda d: d.find_element(By.ID, "org-body").is_displayed())
    conn = await asyncpg.connect(world.database_url)
    try:
        await conn.execute(
            "UPDATE customer_health SET health_score = 70 WHERE organization_id = $1",
            world.orgs["bloom"],
        )
    finally:
        await conn.close()
    await run(browser.back)
    await run(wait, browser, lambda d: d.find_element(By.ID, "org-empty").is_displayed())
    assert browser.execute_script("return document.activeElement.id") == "list-title"
    status = browser.find_element(By.ID, "status").text.replace("\u2068", "").replace("\u2069", "")
    assert status.startswith("Bloom & Vow Weddings is no longer in this list"), status
    # the queue the same: back on the link of the interaction's row it was opened from
    await run(browser.get, f"{world.address}/#/support")
    await run(wait, browser, lambda d: d.find_element(By.ID, "view-support").is_displayed())
    await run(browser.find_element(By.ID, "s-mine").click)
    await run(wait, browser, lambda d: len(rows(d, "interaction-table", "data-interaction")) == 3)
    interaction = rows(browser, "interaction-table", "data-interaction")[2]
    row = f'#interaction-table tr[data-interaction="{interaction}"]'
    await run(browser.find_element(By.CSS_SELECTOR, f"{row} td a").send_keys, Keys.ENTER)
    await run(wait, browser, lambda d: d.find_element(By.ID, "org-body").is_displayed())
    await run(browser.back)
    await run(
        wait,
        browser,
        lambda d: d.execute_script(
            "const e = document.activeElement;"
            "return e.tagName === 'A' && e.closest('tr').dataset.interaction === arguments[0];",
            interaction,
        ),
    )


async def test_show_more_brings_a_rescored_organization_once(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    run = asyncio.to_thread
    await add_quiet_organizations(world)
    total = len(world.orgs) + QUIET_ORGANIZATIONS
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 50)
    # the riskiest organization, rescored while the first page is on screen, now sorts
    # after every quiet one: the next page (rows after the last shown) brings it again
    first = rows(browser, "org-table", "data-organization")[0]
    conn = await asyncpg.connect(world.database_url)
    try:
        await conn.execute(
            "UPDATE customer_health SET churn_probability = 0.0001 WHERE organization_id = $1",
            uuid.UUID(first),
        )
    finally:
        await conn.close()
    await run(browser.find_element(By.ID, "org-more").send_keys, Keys.ENTER)
    await run(wait, browser, lambda d: d.find_element(By.ID, "org-more").get_attribute("hidden"))
    shown = rows(browser, "org-table", "data-organization")
    assert shown.count(first) == 1, shown
    # where the newer page puts it: last, below every quiet organization
    assert shown[-1] == first
    assert len(shown) == total


def milestone_fact(driver: WebDriver) -> str:
    found: str = driver.execute_script(
        "const dt = [...document.querySelectorAll('#org-facts dt')]"
        ".find(e => e.textContent === 'Milestones');"
        "return dt.nextElementSibling.textContent;"
    )
    return found


async def test_the_milestones_follow_the_facts_that_count_them(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    run = asyncio.to_thread
    bloom = world.orgs["bloom"]
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    await run(browser.get, f"{world.address}/#/org/{bloom}")
    await run(wait, browser, org_page_ready)
    assert sorted(rows(browser, "milestone-table", "data-milestone")) == [
        "clients_10",
        "first_client_added",
    ]
    browser.execute_script(WATCH_FOCUS)
    button = browser.find_element(
        By.CSS_SELECTOR, '#milestone-table tr[data-milestone="first_client_added"] button'
    )
    browser.execute_script("arguments[0].focus(); window.focusMoves = 0", button)
    # the organization onboards while its page is open (the service records the milestone)
    conn = await asyncpg.connect(world.database_url)
    try:
        await b.insert_row(
            conn,
            "success_milestones",
            b.success_milestone(
                bloom, milestone_type="onboarding_completed", achieved_at=NOW - timedelta(hours=1)
            ),
        )
    finally:
        await conn.close()
    # the facts count it ("2 to acknowledge"), and its row is there to acknowledge (the
    # table stayed as the page opened, and the count stood beside rows that lacked it)
    await run(wait, browser, lambda d: "(2 to acknowledge)" in milestone_fact(d))
    await run(
        wait,
        browser,
        lambda d: "onboarding_completed" in rows(d, "milestone-table", "data-milestone"),
    )
    # the user on the other milestone's button was left there
    assert browser.execute_script("return document.activeElement") == button
    assert browser.execute_script("return window.focusMoves") == 0


async def test_a_refresh_does_not_apply_a_filter_the_user_has_not(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    run = asyncio.to_thread
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    listed = rows(browser, "org-table", "data-organization")
    # a factor being typed, not applied yet (no Enter, no Apply): the list as it was,
    # refresh after refresh (the refresh applied it: the rows vanished under the user,
    # "No organization ... matches these filters", unasked and unannounced)
    await run(browser.find_element(By.ID, "f-factor").send_keys, "few logins")
    for _ in range(2):
        await run(restamped, browser, "list-updated")
    assert rows(browser, "org-table", "data-organization") == listed
    assert not browser.find_element(By.ID, "org-empty").is_displayed()
    # applied, it applies
    await run(browser.find_element(By.ID, "f-factor").send_keys, Keys.ENTER)
    await run(wait, browser, lambda d: d.find_element(By.ID, "org-empty").is_displayed())
    # the same in the queue: a search typed, not run
    await run(browser.get, f"{world.address}/#/support")
    await run(wait, browser, lambda d: d.find_element(By.ID, "view-support").is_displayed())
    await run(browser.find_element(By.ID, "s-mine").click)
    await run(wait, browser, lambda d: len(rows(d, "interaction-table", "data-interaction")) == 3)
    queued = rows(browser, "interaction-table", "data-interaction")
    await run(browser.find_element(By.ID, "s-q").send_keys, "invoice")
    for _ in range(2):
        await run(restamped, browser, "support-updated")
    assert rows(browser, "interaction-table", "data-interaction") == queued
    await run(browser.find_element(By.ID, "s-q").send_keys, Keys.ENTER)
    await run(wait, browser, lambda d: len(rows(d, "interaction-table", "data-interaction")) == 1)


async def test_an_organization_and_the_queue_say_how_old_their_figures_are(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    run = asyncio.to_thread
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    await run(browser.get, f"{world.address}/#/org/{world.orgs['bloom']}")
    await run(wait, browser, org_page_ready)
    # as the list says it: the time of the last load, and that it refreshes by itself
    updated = browser.find_element(By.ID, "org-updated")
    # and how far the scores themselves are behind the events (GET /api/v1/freshness:
    # the fetch time alone passed for the scores' age, review 32b F7)
    fresh = r"\. Scores are (current|about \d+ (min|h) behind the events applied: .*)\.$"
    await run(
        wait,
        browser,
        lambda d: "; refreshes every 2 s" in updated.text and re.search(fresh, updated.text),
    )
    assert updated.text.startswith("Updated "), updated.text
    # paused (WCAG 2.2.2), the page says so beside the time the figures were loaded at
    # (it said nothing: paused figures passed for current ones)
    await run(browser.find_element(By.ID, "auto-update").send_keys, Keys.SPACE)
    await run(wait, browser, lambda d: "; updates paused" in updated.text)
    stamp = updated.text
    await asyncio.sleep(3)  # more than a period: no refresh wrote it again
    assert updated.text == stamp
    # another organization's page does not show this one's time before its own load
    await run(browser.get, f"{world.address}/#/org/{uuid.uuid4()}")
    await run(
        wait, browser, lambda d: d.find_element(By.ID, "org-title").text == "Organization not found"
    )
    assert browser.find_element(By.ID, "org-updated").text == ""
    # the queue, paused, says so too (it said "Updated 10:42:07 AM" as if it went on)
    await run(browser.get, f"{world.address}/#/support")
    await run(
        wait,
        browser,
        lambda d: d.find_element(By.ID, "support-updated").text.endswith("; updates paused"),
    )
    await run(browser.find_element(By.ID, "auto-update").send_keys, Keys.SPACE)
    await run(
        wait,
        browser,
        lambda d: d.find_element(By.ID, "support-updated").text.endswith("; refreshes every 2 s"),
    )


async def test_a_reward_recorded_meanwhile_is_shown_as_it_is(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    run = asyncio.to_thread
    bloom = world.orgs["bloom"]
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    await run(browser.get, f"{world.address}/#/org/{bloom}")
    await run(wait, browser, org_page_ready)
    # the updates paused while the user reads; a colleague records the reward meanwhile
    await run(browser.find_element(By.ID, "auto-update").send_keys, Keys.SPACE)
    conn = await asyncpg.connect(world.database_url)
    try:
        await conn.execute(
            "UPDATE success_milestones SET reward_status = 'delivered', reward_delivered_at = now()"
            " WHERE organization_id = $1 AND milestone_type = 'clients_10'",
            bloom,
        )
    finally:
        await conn.close()
    row = '#milestone-table tr[data-milestone="clients_10"]'
    await run(browser.find_element(By.CSS_SELECTOR, f"{row} button").send_keys, Keys.ENTER)
    # refused (409): said why, and the row shows the reward delivered with nothing more to
    # do (it went on offering "Reward delivered" and "Declined", each refused in turn)
    await run(wait, browser, lambda d: "already delivered" in d.find_element(By.ID, "status").text)
    await run(
        wait,
        browser,
        lambda d: not d.find_elements(By.CSS_SELECTOR, f"{row} button"),
    )
    assert "delivered" in browser.find_element(By.CSS_SELECTOR, f"{row} td:nth-of-type(3)").text
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("Not recorded: the reward is already delivered."), status
    # the keyboard stays in the row (on its header cell), not at the page's start
    focus_row = browser.execute_script(
        "return document.activeElement.closest('tr') && document.activeElement.closest('tr')"
        ".dataset.milestone"
    )
    assert focus_row == "clients_10", focus_row


async def test_a_name_opened_in_the_list_stays_open_when_its_row_changes(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    run = asyncio.to_thread
    org, _ = await lengthen(world)
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 5)
    row = f'#org-table tr[data-organization="{org}"]'
    toggle = await run(
        wait, browser, lambda d: d.find_element(By.CSS_SELECTOR, f"{row} .more-text")
    )
    browser.execute_script("arguments[0].focus()", toggle)
    await run(toggle.send_keys, Keys.ENTER)
    assert whole(browser, browser.find_element(By.CSS_SELECTOR, f"{row} a"))
    # the organization rescored: its row is drawn anew with the new score
    conn = await asyncpg.connect(world.database_url)
    try:
        await conn.execute(
            "UPDATE customer_health SET health_score = 27 WHERE organization_id = $1",
            uuid.UUID(org),
        )
    finally:
        await conn.close()
    await run(
        wait,
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, f"{row} td").text == "27.0",
    )
    # its name still whole, the focus still on its button, which still says so (the
    # name was cut again and the focus had gone to the link)
    assert whole(browser, browser.find_element(By.CSS_SELECTOR, f"{row} a"))
    focused = browser.execute_script(
        "const e = document.activeElement;"
        "return [e.className, e.getAttribute('aria-expanded'),"
        " e.closest('tr').dataset.organization];"
    )
    assert focused == ["more-text", "true", org], focused


async def test_the_risk_factors_shown_add_up_to_the_score(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    """The factors' impacts sum to score - 100 in hundredths; the page showed each one
    rounded alone to tenths, so four of -10.25 and one of -26.00 at a score of 33.0 read
    -10.3 four times, -67.2 together: a reader adding them up found 0.2 points nowhere."""
    run = asyncio.to_thread
    org = world.orgs["evergreen"]
    impacts = [-26.0, -10.25, -10.25, -10.25, -10.25]
    factors = [
        {"factor": f"factor_{i}", "value": 1.0, "impact": impact, "detail": f"reason {i}"}
        for i, impact in enumerate(impacts)
    ]
    conn = await asyncpg.connect(world.database_url)
    try:
        await conn.execute(
            "UPDATE customer_health SET health_score = 33.00, risk_factors = $2::jsonb "
            "WHERE organization_id = $1",
            org,
            json.dumps(factors),
        )
    finally:
        await conn.close()
    await run(browser.get, world.link("admin"))
    await run(browser.get, f"{world.address}/#/org/{org}")
    await run(
        wait,
        browser,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#factor-table tbody tr")) == 5,
    )
    cells = browser.find_elements(By.CSS_SELECTOR, "#factor-table tbody td.num")
    shown = [Decimal(cell.text.replace("−", "-")) for cell in cells]
    assert sum(shown) == Decimal("-67.0"), shown
    # each within a tenth of its own value, the largest first
    assert all(
        abs(s - Decimal(str(i))) < Decimal("0.1") for s, i in zip(shown, impacts, strict=True)
    )
    total = browser.find_element(By.ID, "factor-sum")
    assert total.is_displayed()
    assert total.text == "Together -67.0 points: 100 − 67.0 = 33.0, the score.", total.text


async def test_a_long_user_name_in_the_header_is_shown_whole_from_the_keyboard(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    """The header cut a long name to one line with an ellipsis and held the whole in a
    `title` tooltip, which no keyboard opens (WCAG 2.1.1, 1.4.13)."""
    run = asyncio.to_thread
    conn = await asyncpg.connect(world.database_url)
    try:
        await conn.execute(
            "UPDATE user_profiles SET full_name = $2 WHERE id = $1",
            world.users["admin"],
            "Dana Admin of the Customer Success Team for the Northern Coast " * 4 + "(its end)",
        )
    finally:
        await conn.close()
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    name = browser.find_element(By.ID, "who-name")
    await run(wait, browser, lambda d: "Dana Admin" in name.text)
    assert name.get_dom_attribute("title") is None
    await run(wait, browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#who .more-text"))
    await run(shown_whole_by_keyboard, browser, name)
    assert "(its end)" in name.text
    await run(screenshot, browser, "daily-long-user-name")


def toggle_names(driver: WebDriver) -> list[tuple[str, str]]:
    """Each "Show all" / "Show less" button on view: its accessible name (as Chromium
    computes it for a screen reader) and the start of the text it shows."""
    found: list[tuple[str, str]] = []
    for toggle in driver.find_elements(By.CSS_SELECTOR, ".more-text"):
        if toggle.is_displayed():
            text = driver.execute_script(
                "return arguments[0].previousElementSibling.textContent", toggle
            )
            found.append((toggle.accessible_name, " ".join(text.split()[:3])))
    return found


async def test_each_show_all_button_says_what_it_shows(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    """Every "Show all" button was named "Show all": a screen reader listing the page's
    buttons heard it again and again, with nothing to tell which text each opens (WCAG
    2.4.6); its name now says, and starts with the words on it (2.5.3)."""
    run = asyncio.to_thread
    _, interaction = await lengthen(world)
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 5)
    await run(browser.get, f"{world.address}/#/support")
    await run(wait, browser, lambda d: d.find_element(By.ID, "view-support").is_displayed())
    await run(browser.find_element(By.ID, "s-mine").click)
    await run(
        wait, browser, lambda d: interaction in rows(d, "interaction-table", "data-interaction")
    )
    # the subject and the organization's name in the same row, both cut
    await run(wait, browser, lambda d: len(toggle_names(d)) == 2)
    names = toggle_names(browser)
    assert len({name for name, _ in names}) == 2, names
    for name, start in names:
        assert name.startswith("Show all"), names
        assert start in name, names
    # opened, it says so the same way
    toggle = browser.find_element(By.CSS_SELECTOR, "#interaction-table .more-text")
    browser.execute_script("arguments[0].focus()", toggle)
    await run(toggle.send_keys, Keys.ENTER)
    await run(wait, browser, lambda d: toggle.text == "Show less")
    assert toggle.accessible_name.startswith("Show less"), toggle.accessible_name
    assert toggle.accessible_name != "Show less"


# every request the page makes, with whether its tab was visible then; and, once the tab
# is shown again, how many it had made by the time the browser told the page so
COUNT_REQUESTS = """
window.requests = [];
const fetched = window.fetch;
window.fetch = (path, options) => {
  window.requests.push([String(path), document.visibilityState]);
  return fetched(path, options);
};
// registered after the page's own listener: runs after it, in the same event
document.addEventListener('visibilitychange', () => {
  if (!document.hidden) window.requestsWhenShown = window.requests.length;
});
"""


async def test_an_organization_is_not_refreshed_while_its_tab_is_hidden(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    """The list and the queue skip their refreshes while their tab is hidden; an
    organization's page went on asking the API every period for nobody to see."""
    run = asyncio.to_thread
    bloom = world.orgs["bloom"]
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    await run(browser.get, f"{world.address}/#/org/{bloom}")
    await run(wait, browser, org_page_ready)
    browser.execute_script(COUNT_REQUESTS)
    page = browser.current_window_handle
    # the user switches to another tab for more than two refresh periods (2 s here)
    await run(browser.switch_to.new_window, "tab")
    await asyncio.sleep(5)
    hidden = browser.current_window_handle
    await run(browser.switch_to.window, page)
    await run(wait, browser, lambda d: d.execute_script("return window.requestsWhenShown"))
    requests = browser.execute_script("return window.requests")
    assert [path for path, visibility in requests if visibility == "hidden"] == [], requests
    # back on it, the refresh that fell due meanwhile is made at once, not a period later
    assert browser.execute_script("return window.requestsWhenShown") >= 1, requests
    assert any(f"/api/v1/organizations/{bloom}" in path for path, _ in requests), requests
    await run(
        wait, browser, lambda d: d.find_element(By.ID, "org-updated").text.startswith("Updated")
    )
    browser.switch_to.window(hidden)
    browser.close()
    browser.switch_to.window(page)


async def set_last_alert(world: World, kind: str, **payload: object) -> None:  # noqa: F811
    """Bloom's last alert made a `kind` one with `payload`'s fields, as the relay writes it."""
    conn = await asyncpg.connect(world.database_url)
    try:
        await conn.execute(
            "UPDATE alert_outbox SET kind = $2, payload = payload || $3::jsonb"
            " WHERE organization_id = $1",
            world.orgs["bloom"],
            kind,
            json.dumps({"kind": kind, **payload}),
        )
    finally:
        await conn.close()


async def test_a_recovery_alert_does_not_say_how_to_leave_risk(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    """A recovery names no action and says why: `out_of_risk`. The card read it as a raise's
    reason: under "What to do: the way out of risk", "a sharp drop in the score raised it
    ... find out what made the score drop", about an organization that had just recovered."""
    run = asyncio.to_thread
    await set_last_alert(
        world,
        "recovered",
        trigger="recovery",
        risk_level="medium",
        health_score=64.0,
        path_to_healthy=[],
        no_path_reason="out_of_risk",
    )
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    await run(browser.get, f"{world.address}/#/org/{world.orgs['bloom']}")
    await run(wait, browser, org_page_ready)
    card = browser.find_element(By.ID, "org-alert").text
    assert "recovered" in card and "out of risk again" in card, card
    assert "drop" not in card, card
    assert not browser.find_elements(By.ID, "path-title"), card


# as the core writes them: the factors under half a point folded into one, named
MINOR_FACTORS = [
    {"factor": "inactivity", "value": 12.0, "impact": -40.0, "detail": "No activity for 12 days"},
    {
        "factor": "few_logins",
        "value": 1.0,
        "impact": -26.0,
        "detail": "Few logins per active user in the last 30 days (1.0 per user).",
    },
    {
        "factor": "minor_factors",
        "value": 3,
        "impact": -0.9,
        "detail": "3 smaller factors together, each under 0.5 points: "
        "few_logins_per_user, login_decline, shallow_usage.",
    },
]


async def with_minor_factors(world: World) -> None:  # noqa: F811
    conn = await asyncpg.connect(world.database_url)
    try:
        await conn.execute(
            "UPDATE customer_health SET health_score = 33.10, risk_factors = $2::jsonb"
            " WHERE organization_id = $1",
            world.orgs["bloom"],
            json.dumps(MINOR_FACTORS),
        )
    finally:
        await conn.close()


def factor_rows(driver: WebDriver) -> dict[str, str]:
    """Each risk factor's row: its name, and what it says in words."""
    found: dict[str, str] = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#factor-table tbody tr')]"
        ".map(r => [r.cells[0].textContent, r.cells[2].querySelector('.clamp').textContent]))"
    )
    return found


async def test_the_smaller_factors_are_named_in_words(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    """The row of the factors under half a point named them as the API does, underscores
    and all ("few_logins_per_user, login_decline, shallow_usage"), beside rows that name
    them in words ("few logins")."""
    run = asyncio.to_thread
    await with_minor_factors(world)
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    await run(browser.get, f"{world.address}/#/org/{world.orgs['bloom']}")
    await run(wait, browser, lambda d: "minor factors" in factor_rows(d))
    said = factor_rows(browser)["minor factors"]
    assert said == (
        "3 smaller factors together, each under 0.5 points: "
        "few logins per user, login decline, shallow usage."
    ), said
    assert browser.find_element(By.ID, "factor-sum").text.startswith("Together -66.9 points")


def factor_words_out_of_view(driver: WebDriver) -> list[str]:
    """The risk factors whose words are not within their table's frame as shown (only
    by scrolling it sideways), and the frame's widths if it scrolls."""
    found: list[str] = driver.execute_script(
        "const frame = document.getElementById('factor-table').parentElement;"
        "const box = frame.getBoundingClientRect();"
        "const out = [...document.querySelectorAll('#factor-table tbody tr')]"
        ".filter(r => { const c = r.cells[2].getBoundingClientRect();"
        " return c.left < box.left - 1 || c.right > box.right + 1; })"
        ".map(r => r.cells[0].textContent);"
        "if (frame.scrollWidth > frame.clientWidth + 1)"
        " out.push(`scrolls: ${frame.scrollWidth} > ${frame.clientWidth}`);"
        "return out;"
    )
    return found


async def test_a_factors_words_are_in_view_at_400_percent_zoom(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    """At 320 px (400% zoom, with WCAG 1.4.12's text spacing) the factor table's third
    column, the factors in words, was wholly outside its frame: to read why the score is
    low, the user scrolled every row sideways, away from the factor it explains."""
    run = asyncio.to_thread
    await with_minor_factors(world)
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    await run(browser.get, f"{world.address}/#/org/{world.orgs['bloom']}")
    await run(wait, browser, lambda d: "minor factors" in factor_rows(d))
    await run(browser.execute_cdp_cmd, "Emulation.setDeviceMetricsOverride", NARROW)
    browser.execute_script(TEXT_SPACING)
    table = browser.find_element(By.ID, "factor-table")
    browser.execute_script("arguments[0].scrollIntoView()", table)
    await run(wait, browser, lambda d: d.execute_script("return innerWidth") == 320)
    assert factor_words_out_of_view(browser) == []
    # still a table to a screen reader: a row's name heads its cells, each under its column
    row = browser.find_element(By.CSS_SELECTOR, "#factor-table tbody tr")
    cells = [row.find_element(By.TAG_NAME, "th"), *row.find_elements(By.TAG_NAME, "td")]
    assert [cell.aria_role for cell in cells] == ["rowheader", "cell", "cell"]
    assert table.aria_role == "table"
    await run(screenshot, browser, "daily-factors-320px")
    await run(browser.execute_cdp_cmd, "Emulation.clearDeviceMetricsOverride", {})


async def test_an_alerts_action_on_an_interaction_leads_to_it(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    """An action of the alert's path about one interaction ("close complaint ...", its
    `interaction_id`) named it by its subject but led nowhere: the user hunted for it in
    the timeline below; and one no longer open was named by its whole id, 36 characters
    of hexadecimal in a sentence for a customer-success manager."""
    run = asyncio.to_thread
    bloom = world.orgs["bloom"]
    conn = await asyncpg.connect(world.database_url)
    try:
        ids = {
            row["subject"]: str(row["id"])
            for row in await conn.fetch(
                "SELECT id, subject FROM support_interactions WHERE organization_id = $1", bloom
            )
        }
    finally:
        await conn.close()
    export, plan = ids["Cannot export the guest list"], ids["Which plan includes seating?"]
    await set_last_alert(
        world,
        "risk_raised",
        path_to_healthy=[
            {
                "action": f"close technical support {export}",
                "factor": "open_interactions",
                "impact": 6.0,
                "interaction_id": export,
            },
            {
                "action": f"close billing inquiry {plan}",
                "factor": "open_interactions",
                "impact": 3.0,
                "interaction_id": plan,
            },
        ],
    )
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    await run(browser.get, f"{world.address}/#/org/{bloom}")
    await run(wait, browser, org_page_ready)
    steps = [step.text for step in browser.find_elements(By.CSS_SELECTOR, "#org-path li")]
    assert not [step for step in steps if export in step or plan in step], steps
    assert steps[1].startswith("Close billing inquiry (no longer open: see it below)"), steps
    link = browser.find_element(By.CSS_SELECTOR, "#org-path li a")
    assert "Cannot export the guest list" in link.text, link.text
    browser.execute_script("arguments[0].focus()", link)
    await run(link.send_keys, Keys.ENTER)
    # the focus on the interaction in the timeline, the page still the organization's
    await run(
        wait,
        browser,
        lambda d: d.execute_script("return document.activeElement.dataset.key") == export,
    )
    assert browser.execute_script("return document.activeElement.closest('#org-timeline')")
    assert browser.current_url.endswith(f"#/org/{bloom}")


async def test_factors_that_do_not_add_up_are_not_summed_into_the_score(
    browser: WebDriver,
    world: World,  # noqa: F811
) -> None:
    """A score written before the small factors were listed (minor_factors) has factors
    that do not add up to it: Bloom's -20, -8 and +2.5 at 22.0. The line under them said
    "Together -25.5 points: 100 − 25.5 = 22.0, the score.", an equation that is false."""
    run = asyncio.to_thread
    await run(browser.get, world.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 4)
    await run(browser.get, f"{world.address}/#/org/{world.orgs['bloom']}")
    await run(wait, browser, org_page_ready)
    total = browser.find_element(By.ID, "factor-sum")
    assert total.is_displayed()
    assert "=" not in total.text, total.text
    assert total.text.startswith("Together -25.5 points. They do not add up to the 78.0"), (
        total.text
    )
