"""The dashboard in headless Chromium with hostile data in every text it shows.

Organization names and plans (the product's table), interaction subjects, feature
names and milestone data come from producers: markup, `javascript:` URLs, CSS,
bidi overrides (U+202E), zero-width and combining characters, 10,000 characters
without a space. The rows are written as the service writes them (the schema's
builders, under its constraints: a subject is 500 characters at most) and read
through the real API under row-level security. The page must run none of it (a
`window` flag, a sentinel request that never leaves, no CSP violation), show it as
text, keep it inside its own box and its own bidi run, tell what the API tells, and
keep nothing of one user for the next one signed in in the same tab.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest

from healthscore.api.auth import issue_hs256
from healthscore.api.server import serve_until, wait_stopped
from tests.e2e.test_dashboard_browser import ARTIFACTS, rows, screenshot, wait
from tests.utils import schema_builders as b
from tests.utils.api import JWT_SECRET, api_config, api_login
from tests.utils.browser import BROWSER_TEST, start_chromium

try:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.webdriver import WebDriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
except ImportError:  # pragma: no cover - the dev extra installs it; BROWSER_TEST skips
    pass

pytestmark = BROWSER_TEST

NOW = datetime.now(UTC).replace(microsecond=0)
SENTINEL = f"sentinel-{uuid.uuid4().hex}"
# every payload sets the flag and asks for the sentinel if it ever runs
RUN = f"window.__pwned=1;fetch('/{SENTINEL}')"
RLO = "\u202e"
PDI = "\u2069"
MARKUP = f'<script>{RUN}</script><img src=x onerror="{RUN}">'
SVG = f'<svg onload="{RUN}"><a href="javascript:{RUN}">click</a></svg>'
CSS = '</style><style>*{display:none!important}</style><p style="position:fixed;inset:0">'
ZALGO = (
    "Z\u0336\u0334\u0335" * 3 + "a" + "\u0301\u0302\u0303\u0304\u0305" * 40 + "\u200b\u200d\ufeff"
)
LONG = "W" * 10_000
PATHS = "../../api/v1/organizations/%2e%2e/%2e%2e/"


@dataclass
class Hostile:
    address: str
    database_url: str
    orgs: dict[str, uuid.UUID]
    users: dict[str, uuid.UUID]
    interactions: dict[str, uuid.UUID]

    def token(self, role: str) -> str:
        return issue_hs256(JWT_SECRET, self.users[role], timedelta(minutes=30))

    def link(self, role: str) -> str:
        return f"{self.address}/#token={self.token(role)}"

    async def api(self, role: str, path: str, **params: Any) -> Any:
        async with httpx.AsyncClient(base_url=self.address) as client:
            answer = await client.get(
                path, params=params, headers={"Authorization": f"Bearer {self.token(role)}"}
            )
        answer.raise_for_status()
        return answer.json()


def factor(name: str, impact: float, detail: str) -> dict[str, Any]:
    return {"factor": name, "value": 1.0, "impact": impact, "detail": detail}


# key -> (name, plan, score, churn, risk factors, feature usage)
ORGANIZATIONS: dict[str, tuple[str, str, str, str, list[dict[str, Any]], dict[str, int]]] = {
    "markup": (
        MARKUP,
        f"{RLO}orp",
        "22.00",
        "0.9100",
        [
            factor("inactivity", -20, MARKUP),
            factor("few_logins", -6, f"{RLO}No logins for 9 days{PDI}{RLO}"),
            factor("shallow_usage", -2, LONG),
        ],
        {MARKUP: 5, f"{RLO}sreggit": 4, "F" * 100: 3, ZALGO: 2},
    ),
    "long": (LONG, "javascript:alert(1)", "30.00", "0.8000", [factor("inactivity", -9, SVG)], {}),
    "svg": (SVG, CSS, "41.00", "0.6000", [factor("inactivity", -5, CSS)], {}),
    "zalgo": (ZALGO, PATHS, "45.00", "0.5000", [factor("few_logins", -4, ZALGO)], {}),
    "bidi": (f"Bidi {RLO}gnidaew{PDI}{RLO}", f"{PDI}{RLO}pro", "50.00", "0.4500", [], {}),
    "plain": ("Plain Weddings", "pro", "55.00", "0.4000", [factor("few_logins", -3, "x")], {}),
}


async def seed(conn: asyncpg.Connection) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    orgs: dict[str, uuid.UUID] = {}
    for key, (name, plan, score, churn, factors, usage) in ORGANIZATIONS.items():
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
                feature_usage=json.dumps(usage),
                score_change_7d=Decimal("-4.25"),
                scored_at=NOW - timedelta(hours=2),
                last_activity_at=NOW - timedelta(days=3),
            ),
        )
    users: dict[str, uuid.UUID] = {}
    for role, name in (
        ("admin", f"Dana {RLO}nimdA {LONG}"),
        ("support", LONG),
        ("other_support", MARKUP),
        ("member", ZALGO),
    ):
        user = b.user_profile(role="support" if role == "other_support" else role, full_name=name)
        await b.insert_row(conn, "user_profiles", user)
        users[role] = user["id"]
    interactions: dict[str, uuid.UUID] = {}
    markup = orgs["markup"]
    for key, org_id, assignee, subject in (
        ("markup", markup, users["support"], MARKUP[:500]),
        ("bidi", markup, users["support"], f"Refund {RLO}001${PDI}{RLO} please"),
        ("long", markup, users["support"], "S" * 500),
        ("zalgo", markup, users["support"], ZALGO),
        ("css", orgs["svg"], users["support"], CSS),
        ("other", orgs["plain"], users["other_support"], "Other team's guest list export"),
    ):
        row = b.support_interaction(
            org_id,
            assigned_to=assignee,
            subject=subject,
            interaction_type="complaint",
            follow_up_required=True,
            follow_up_at=NOW - timedelta(days=1),
            opened_at=NOW - timedelta(days=2, minutes=len(interactions)),
        )
        await b.insert_row(conn, "support_interactions", row)
        interactions[key] = row["id"]
    for milestone, reward in (("first_client_added", "badge"), ("clients_10", "discount")):
        await b.insert_row(
            conn,
            "success_milestones",
            b.success_milestone(
                markup,
                milestone_type=milestone,
                reward_type=reward,
                reward_status="pending",
                achieved_at=NOW - timedelta(days=3),
            ),
        )
    for days_ago, past in ((3, 40), (2, 31), (1, 22)):
        await b.insert_row(
            conn,
            "health_score_history",
            b.health_score_history(
                markup,
                scored_at=NOW - timedelta(days=days_ago),
                health_score=Decimal(past),
                churn_probability=Decimal("0.8"),
                risk_level="high",
            ),
        )
    # the alert names the bidi subject's interaction (as data, and in its text for the
    # consumers before the field): the page puts its subject in words; the last step is
    # an alert's from before the field, which names its interaction in the text alone
    path = [
        {
            "action": f"close complaint {interactions['bidi']}",
            "factor": "open_escalations",
            "impact": 12.0,
            "interaction_id": str(interactions["bidi"]),
        },
        {
            "action": "get each active user logging in regularly",
            "factor": "few_logins",
            "impact": 4.5,
            "interaction_id": None,
        },
        {
            "action": f"close complaint {interactions['long']}",
            "factor": "open_interactions",
            "impact": 1.0,
        },
    ]
    await b.insert_row(
        conn,
        "alert_outbox",
        b.alert_outbox(
            markup,
            payload=json.dumps(
                {
                    "kind": "risk_raised",
                    "risk_level": "high",
                    "health_score": 22.0,
                    "trigger": "probability_threshold",
                    "path_to_healthy": path,
                }
            ),
        ),
    )
    # a raise by a sharp drop whose churn probability is below the recovery threshold:
    # no action, and the alert says why (no_path_reason)
    await b.insert_row(
        conn,
        "alert_outbox",
        b.alert_outbox(
            orgs["svg"],
            payload=json.dumps(
                {
                    "kind": "risk_raised",
                    "risk_level": "low",
                    "health_score": 41.0,
                    "trigger": "score_drop",
                    "path_to_healthy": [],
                    "no_path_reason": "out_of_risk",
                }
            ),
        ),
    )
    # what the admins' "How far to trust these scores" shows comes from the model file
    # (its version, its evaluation's source): a model written by hand can say anything
    await conn.execute(
        "INSERT INTO score_quality_summary (score_model_version, backtest, episodes_churned,"
        " episodes_retained, episodes_pending, churners, churners_alerted, lead_days_quartiles)"
        " VALUES ($1, $2::jsonb, 3, 1, 2, 4, 3, '{5,12.5,20}')",
        f"{RLO}4v{MARKUP}",
        json.dumps(
            {
                "source": f"{LONG}{RLO}{SVG}",
                "held_out_organizations": 124,
                "figures": {"auc_30d_churn_probability": 0.93, "recall": 0.8},
            }
        ),
    )
    return orgs, users, interactions


@pytest.fixture
async def hostile(migrated_database: str, pg_admin_url: str) -> AsyncIterator[Hostile]:
    conn = await asyncpg.connect(migrated_database)
    try:
        orgs, users, interactions = await seed(conn)
    finally:
        await conn.close()
    stop = asyncio.Event()
    async with api_login(pg_admin_url, migrated_database) as login:
        config = replace(await api_config(migrated_database, login), refresh_seconds=1.0)
        address = (await serve_until(config, "127.0.0.1", 0, stop)).api
        world = Hostile(address, migrated_database, orgs, users, interactions)
        # acknowledged through the API by the admin, whose name has 10,000 characters
        async with httpx.AsyncClient(base_url=address) as client:
            acknowledged = await client.post(
                f"/api/v1/organizations/{orgs['markup']}/milestones/clients_10/acknowledge",
                headers={"Authorization": f"Bearer {world.token('admin')}"},
            )
        assert acknowledged.status_code < 300, acknowledged.text
        try:
            yield world
        finally:
            stop.set()
            await wait_stopped()


# recorded from before the page's first script: CSP violations, errors, the flag
WATCH = """
window.__violations = [];
window.__errors = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + e.sample));
window.addEventListener('error', (e) => window.__errors.push(String(e.message)));
"""


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    driver: WebDriver = start_chromium(log_performance=True)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH})
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: WebDriver, name: str) -> None:
    """The whole page; the window alone when the page is too large to capture."""
    try:
        screenshot(driver, name)
    except WebDriverException:
        driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def requested(driver: WebDriver) -> list[str]:
    log = driver.get_log("performance")  # type: ignore[no-untyped-call]
    urls = []
    for entry in log:
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def nothing_ran(driver: WebDriver, seen: list[str]) -> None:
    seen.extend(requested(driver))
    assert driver.execute_script("return window.__pwned") is None
    assert not [u for u in seen if SENTINEL in u or u.startswith("javascript:")], seen
    assert driver.execute_script("return window.__violations") == []
    assert driver.execute_script("return window.__errors") == []
    log = driver.get_log("browser")  # type: ignore[no-untyped-call]
    assert not [e for e in log if e["level"] == "SEVERE"], log
    # no element came from the data: the page's own markup holds no image, frame or style
    assert (
        driver.execute_script(
            "return document.querySelectorAll('main img, main iframe, main style, main script,"
            " main [onerror], main [onload], main [style*=fixed]').length"
        )
        == 0
    )


def fits(driver: WebDriver) -> None:
    """Nothing sticks out of the page sideways."""
    width, scrolled = driver.execute_script(
        "return [document.documentElement.clientWidth, document.documentElement.scrollWidth]"
    )
    assert scrolled <= width, (scrolled, width)


def in_view_of_its_frame(driver: WebDriver, selector: str) -> list[str]:
    """The elements `selector` finds that lie (partly) outside their scrolling frame's
    visible box: scrolled out of view by what stands before them."""
    out: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].filter(e => {"
        " const frame = e.closest('.table-wrap, .card, main').getBoundingClientRect();"
        " const box = e.getBoundingClientRect();"
        " return box.left < frame.left - 1 || box.right > frame.right + 1;"
        "}).map(e => e.textContent.slice(0, 40))",
        selector,
    )
    return out


def ink_spills(driver: WebDriver, source: str, neighbour: str) -> bool:
    """Whether what `source` draws (combining marks stacked above and below their line)
    shows on `neighbour`: its pixels with and without `source`'s ink."""

    def capture() -> str:
        box = driver.execute_script(
            "const e = document.querySelector(arguments[0]); e.scrollIntoView({block: 'center'});"
            "const r = e.getBoundingClientRect();"
            "return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height};",
            neighbour,
        )
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"clip": {**box, "scale": 1}, "captureBeyondViewport": True}
        )
        data: str = shot["data"]
        return data

    def ink(color: str) -> None:
        driver.execute_script(
            "document.querySelector(arguments[0]).style.color = arguments[1]", source, color
        )

    # judged only where nothing else moved the neighbour between the captures (the page
    # refreshes its data; on a loaded machine a refresh once fell between them)
    for _ in range(5):
        with_ink = capture()
        ink("transparent")
        try:
            without = capture()
        finally:
            ink("")
        if capture() == with_ink:
            return without != with_ink
    raise AssertionError(f"{neighbour} kept changing between captures")


def letters_in_order(driver: WebDriver, selector: str, word: str) -> bool:
    """Whether `word`, in the element's text after its data, is laid out left to right
    (a bidi override leaking from the data before it draws it reversed)."""
    ordered: bool = driver.execute_script(
        """
        const root = document.querySelector(arguments[0]);
        const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
        let node, found = null;
        while ((node = walker.nextNode())) {
          const at = node.data.lastIndexOf(arguments[1]);
          if (at >= 0) found = [node, at];
        }
        if (!found) throw new Error('no ' + arguments[1] + ' in ' + arguments[0]);
        const [text, at] = found;
        const box = (i) => { const r = document.createRange(); r.setStart(text, i);
          r.setEnd(text, i + 1); return r.getBoundingClientRect(); };
        const first = box(at), last = box(at + arguments[1].length - 1);
        return first.left < last.left;
        """,
        selector,
        word,
    )
    return ordered


async def test_hostile_text_runs_nothing_and_stays_in_its_box(
    browser: WebDriver, hostile: Hostile
) -> None:
    run = asyncio.to_thread
    seen: list[str] = []
    await run(browser.get, hostile.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 6)
    nothing_ran(browser, seen)
    # shown as text, exactly as stored
    names = browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#org-table tbody tr')]"
        ".map(r => [r.dataset.organization, r.querySelector('th a').textContent]))"
    )
    for key, (name, *_rest) in ORGANIZATIONS.items():
        assert names[str(hostile.orgs[key])].replace(PDI, "").replace("\u202c", "") == (
            name.replace(PDI, "").replace("\u202c", "")
        )
    await run(shot, browser, "hostile-list")
    fits(browser)
    # every organization's score and reasons in view: no name pushes them out of the table
    assert in_view_of_its_frame(browser, "#org-table tbody td") == []
    heights = browser.execute_script(
        "return [...document.querySelectorAll('#org-table tbody tr')]"
        ".map(r => r.getBoundingClientRect().height)"
    )
    assert max(heights) < 200, heights
    # the model file's words in "How far to trust these scores": text, in their own bidi
    # run, a line rather than 10,000 characters
    await run(browser.find_element(By.CSS_SELECTOR, "#trust summary").click)
    backtest = browser.find_element(By.ID, "trust-backtest").get_attribute("textContent") or ""
    assert MARKUP in backtest and "\u2068\u202e4v" in backtest, backtest[:300]
    assert len(backtest) < 800, len(backtest)
    live = browser.find_element(By.ID, "trust-live").get_attribute("textContent") or ""
    assert "3 of the 4 alerts whose outcome is known" in live, live
    assert browser.find_element(By.ID, "trust").size["height"] < 300
    nothing_ran(browser, seen)
    fits(browser)

    # the organization page of the worst one
    await run(browser.get, f"{hostile.address}/#/org/{hostile.orgs['markup']}")
    await run(
        wait,
        browser,
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#org-timeline li")
            and d.find_elements(By.CSS_SELECTOR, "#milestone-table tbody tr")
            and d.find_elements(By.CSS_SELECTOR, "#org-path li")
        ),
    )
    await run(shot, browser, "hostile-organization")
    nothing_ran(browser, seen)
    fits(browser)
    assert browser.find_element(By.ID, "org-title").get_attribute("textContent") == MARKUP
    assert in_view_of_its_frame(browser, "#milestone-table button") == []
    assert in_view_of_its_frame(browser, "#factor-table td, #org-timeline li, #org-usage li") == []
    # the subject made of combining marks draws over no other interaction
    assert not ink_spills(
        browser, "#org-timeline li:nth-child(4) strong", "#org-timeline li:nth-child(3)"
    )
    # nor does the interaction's org column etc. squeeze the fixed words: a factor's name,
    # a reward, stay whole words
    assert browser.execute_script(
        "return [...document.querySelectorAll('#factor-table tbody th, #milestone-table tbody td')]"
        ".every(c => c.scrollWidth <= c.clientWidth)"
    )
    # the long name of the organization and of the factor's detail do not bury the page
    assert browser.find_element(By.ID, "org-title").size["height"] < 200
    detail_heights = browser.execute_script(
        "return [...document.querySelectorAll('#factor-table tbody tr, #milestone-table tbody tr')]"
        ".map(r => r.getBoundingClientRect().height)"
    )
    assert max(detail_heights) < 300, detail_heights

    # the other hostile pages
    for key in ("long", "svg", "zalgo", "bidi"):
        await run(browser.get, f"{hostile.address}/#/org/{hostile.orgs[key]}")
        await run(wait, browser, lambda d: d.find_element(By.ID, "org-body").is_displayed())
        nothing_ran(browser, seen)
        fits(browser)
        assert browser.find_element(By.ID, "org-title").size["height"] < 200, key

    # ids that look like paths: not found, nothing requested outside the API's routes
    for route in ("#/org/../../api/v1/me", "#/org/%2e%2e%2f%2e%2e", f"#/org/{PATHS}"):
        await run(browser.get, f"{hostile.address}/{route}")
        await run(
            wait,
            browser,
            lambda d: d.find_element(By.ID, "org-title").text == "Organization not found",
        )
    nothing_ran(browser, seen)
    assert not [u for u in seen if "%2e" in u.lower() or "/../" in u], seen

    # the support person's queue: their rows, subjects as text and contained
    await run(browser.get, hostile.link("support"))
    await run(wait, browser, lambda d: len(rows(d, "interaction-table", "data-interaction")) == 5)
    await run(shot, browser, "hostile-support-queue")
    nothing_ran(browser, seen)
    fits(browser)
    assert in_view_of_its_frame(browser, "#interaction-table tbody td") == []
    assert str(hostile.interactions["other"]) not in rows(
        browser, "interaction-table", "data-interaction"
    )


async def test_a_bidi_override_stays_in_its_field(browser: WebDriver, hostile: Hostile) -> None:
    run = asyncio.to_thread
    await run(browser.get, hostile.link("admin"))
    await run(wait, browser, lambda d: rows(d, "org-table", "data-organization"))
    await run(browser.get, f"{hostile.address}/#/org/{hostile.orgs['markup']}")
    await run(wait, browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#org-path li"))
    # the path's first step names the interaction by its subject (which ends in an
    # override): the points after it read left to right
    assert letters_in_order(browser, "#org-path li", "points")
    steps = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#org-path li")]
    assert "Refund" in steps[0] and str(hostile.interactions["bidi"]) not in steps[0], steps
    assert steps[2].startswith("Close complaint “\u2068SSS"), steps  # the text alone: older
    # the plan ends in an override: "scored" after it is not reversed
    assert letters_in_order(browser, "#org-subtitle", "scored")
    # the window's title: the name's override does not reach " · Customer health"
    await run(browser.get, f"{hostile.address}/#/org/{hostile.orgs['bidi']}")
    await run(wait, browser, lambda d: d.find_element(By.ID, "org-body").is_displayed())
    assert unclosed_at(browser.title, " · Customer health") == 0, ascii(browser.title)
    assert letters_in_order(browser, "#org-subtitle", "scored")


def unclosed_at(text: str, suffix: str) -> int:
    """How many embeddings, overrides or isolates (Unicode's bidi algorithm, X1-X8) are
    still open where `suffix` starts in `text`."""
    stack: list[str] = []
    for char in text[: text.rindex(suffix)]:
        if "\u202a" <= char <= "\u202e" and char != "\u202c":
            stack.append("e")
        elif char == "\u202c" and stack and stack[-1] == "e":
            stack.pop()
        elif "\u2066" <= char <= "\u2068":
            stack.append("i")
        elif char == PDI and "i" in stack:
            del stack[len(stack) - 1 - stack[::-1].index("i") :]
    return len(stack)


async def test_nothing_of_one_user_stays_for_the_next(browser: WebDriver, hostile: Hostile) -> None:
    run = asyncio.to_thread
    # the admin sees everything: the list, an organization, the whole queue
    await run(browser.get, hostile.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 6)
    await run(browser.get, f"{hostile.address}/#/org/{hostile.orgs['plain']}")
    await run(wait, browser, lambda d: d.find_element(By.ID, "org-body").is_displayed())
    await run(browser.get, f"{hostile.address}/#/support")
    await run(browser.find_element(By.ID, "s-mine").click)  # everybody's
    await run(wait, browser, lambda d: len(rows(d, "interaction-table", "data-interaction")) == 6)
    await run(Select(browser.find_element(By.ID, "s-status")).select_by_value, "")
    await run(browser.get, f"{hostile.address}/#/")
    await run(Select(browser.find_element(By.ID, "f-band")).select_by_value, "critical")
    # signed out: nothing of the admin's answers is left in the page or its storage
    await run(browser.find_element(By.ID, "sign-out").click)
    await run(wait, browser, lambda d: d.find_element(By.ID, "view-signin").is_displayed())
    left = browser.execute_script(
        "return {orgs: document.querySelectorAll('#org-table tbody tr').length,"
        " interactions: document.querySelectorAll('#interaction-table tbody tr').length,"
        " factors: document.querySelectorAll('#factor-names option').length,"
        " page: document.getElementById('org-title').textContent"
        "   + document.getElementById('org-facts').textContent"
        "   + document.getElementById('org-timeline').textContent,"
        " who: document.getElementById('who-name').textContent,"
        " session: sessionStorage.length, local: localStorage.length}"
    )
    assert left == {
        "orgs": 0,
        "interactions": 0,
        "factors": 0,
        "page": "",
        "who": "",
        "session": 0,
        "local": 0,
    }, left
    assert browser.execute_script("return (await caches.keys()).length") == 0
    # nor the filters the admin chose: the next user starts from the defaults
    filters = browser.execute_script(
        "return [document.getElementById('s-mine').checked,"
        " document.getElementById('s-status').value,"
        " document.getElementById('f-band').value]"
    )
    assert filters == [True, "open", ""], filters

    # the support person signs in in the same tab while their answers are slow to come:
    # the admin's rows are not shown meanwhile
    await run(browser.execute_cdp_cmd, "Network.enable", {})
    await run(
        browser.execute_cdp_cmd, "Network.setBlockedURLs", {"urls": ["*/api/v1/interactions*"]}
    )
    await run(browser.find_element(By.ID, "signin-token").send_keys, hostile.token("support"))
    await run(browser.find_element(By.CSS_SELECTOR, "#signin-form button").click)
    await run(wait, browser, lambda d: d.find_element(By.ID, "view-support").is_displayed())
    await run(wait, browser, lambda d: "Cannot reach" in d.find_element(By.ID, "status").text)
    assert rows(browser, "interaction-table", "data-interaction") == []
    await run(browser.execute_cdp_cmd, "Network.setBlockedURLs", {"urls": []})
    # (a first load that failed is not retried by itself: the page says to reload)
    await run(browser.find_element(By.CSS_SELECTOR, "#support-filters button").click)
    await run(wait, browser, lambda d: len(rows(d, "interaction-table", "data-interaction")) == 5)
    assert str(hostile.interactions["other"]) not in rows(
        browser, "interaction-table", "data-interaction"
    )
    # "everybody's" is only what their role may see
    if browser.find_element(By.ID, "s-mine").is_selected():
        await run(browser.find_element(By.ID, "s-mine").click)
    await run(wait, browser, lambda d: not d.find_element(By.ID, "s-mine").is_selected())
    await asyncio.sleep(1.5)
    assert str(hostile.interactions["other"]) not in rows(
        browser, "interaction-table", "data-interaction"
    )
    # the list and the admin's organization page: nothing for a support person
    await run(browser.get, f"{hostile.address}/#/")
    await run(wait, browser, lambda d: d.find_element(By.ID, "org-empty").is_displayed())
    assert rows(browser, "org-table", "data-organization") == []
    assert (
        browser.execute_script("return document.querySelectorAll('#factor-names option').length")
        == 0
    )
    await run(browser.get, f"{hostile.address}/#/org/{hostile.orgs['plain']}")
    await run(
        wait, browser, lambda d: d.find_element(By.ID, "org-title").text == "Organization not found"
    )


async def test_the_page_tells_what_the_api_tells(browser: WebDriver, hostile: Hostile) -> None:
    run = asyncio.to_thread
    # a viewer far from UTC: every time says its zone
    await run(
        browser.execute_cdp_cmd, "Emulation.setTimezoneOverride", {"timezoneId": "Pacific/Auckland"}
    )
    await run(browser.get, hostile.link("admin"))
    await run(wait, browser, lambda d: len(rows(d, "org-table", "data-organization")) == 6)
    page = await hostile.api("admin", "/api/v1/organizations", limit=50)
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#org-table tbody tr')].map(r => ({"
        " id: r.dataset.organization, cells: [...r.cells].map(c => c.textContent)}))"
    )
    assert [r["id"] for r in shown] == [o["organization_id"] for o in page["items"]]
    for row, org in zip(shown, page["items"], strict=True):
        cells = row["cells"]
        assert cells[1] == f"{org['health_score']:.1f}", (cells, org)
        assert cells[4].replace(" ", "_") == org["risk_level"]
        assert cells[3] == f"{round(org['churn_probability'] * 100)}%"
        assert "GMT+13" in cells[8] or "NZDT" in cells[8], cells[8]

    markup = hostile.orgs["markup"]
    await run(browser.get, f"{hostile.address}/#/org/{markup}")
    await run(wait, browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#history-table tbody tr"))
    detail = await hostile.api("admin", f"/api/v1/organizations/{markup}")
    history = await hostile.api("admin", f"/api/v1/organizations/{markup}/history", days=30)
    assert browser.find_element(By.ID, "org-score").get_attribute("textContent") == (
        f"{detail['health_score']:.1f}"
    )
    assert browser.find_element(By.ID, "org-risk").get_attribute("textContent") == (
        f"{detail['risk_level']} churn risk"
    )
    # the detail's own text (a long one has its "Show all" button after it)
    factors = browser.execute_script(
        "return [...document.querySelectorAll('#factor-table tbody tr')]"
        ".map(r => [r.cells[0].textContent, r.cells[1].textContent,"
        " r.cells[2].querySelector('.clamp').textContent])"
    )
    expected = [
        [f["factor"].replace("_", " "), f"{f['impact']:.1f}", f["detail"]]
        for f in detail["risk_factors"]
        if f["impact"] != 0
    ]
    assert [[n, i, d.replace(PDI, "").replace("\u202c", "")] for n, i, d in factors] == [
        [n, i, d.replace(PDI, "").replace("\u202c", "")] for n, i, d in expected
    ]
    points = browser.execute_script(
        "return [...document.querySelectorAll('#history-table tbody tr')]"
        ".map(r => [r.cells[0].textContent, r.cells[1].textContent])"
    )
    assert points == [[p["day"], f"{p['health_score']:.1f}"] for p in reversed(history["points"])]
    # the milestone's day and the acknowledgement: with the zone, not a bare local date
    achieved = browser.execute_script(
        "return [...document.querySelectorAll('#milestone-table tbody tr')]"
        ".map(r => r.cells[1].textContent)"
    )
    assert all(("GMT+13" in a or "NZDT" in a) for a in achieved), achieved
    # the history's days are UTC days (HistoryPoint): said so, beside local times
    header = browser.find_element(By.CSS_SELECTOR, "#history-table thead th")
    assert "UTC" in (header.get_attribute("textContent") or ""), header
    assert "UTC" in browser.find_element(By.ID, "chart-summary").text
    await run(browser.get, f"{hostile.address}/#/")
    await run(wait, browser, lambda d: "Updated" in d.find_element(By.ID, "list-updated").text)
    updated = browser.find_element(By.ID, "list-updated").text
    assert "GMT+13" in updated or "NZDT" in updated, updated


async def test_an_empty_path_says_the_alerts_own_reason(
    browser: WebDriver, hostile: Hostile
) -> None:
    # The page said "a signal only time heals held the score under its ceiling" for every
    # alert without an action, also for a raise by a sharp drop that was out of risk
    run = asyncio.to_thread
    svg = hostile.orgs["svg"]
    detail = await hostile.api("admin", f"/api/v1/organizations/{svg}")
    assert detail["last_alert"]["no_path_reason"] == "out_of_risk", detail["last_alert"]
    await run(browser.get, hostile.link("admin"))
    await run(wait, browser, lambda d: rows(d, "org-table", "data-organization"))
    await run(browser.get, f"{hostile.address}/#/org/{svg}")
    none = await run(wait, browser, lambda d: d.find_elements(By.ID, "org-path-none"))
    assert "already below the recovery threshold" in none[0].text, none[0].text
    assert "time heals" not in none[0].text
