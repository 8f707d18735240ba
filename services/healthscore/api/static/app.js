// The customer-success dashboard: plain JavaScript, no build step, no network
// access but this server's /api/v1. Data is only ever written with
// textContent, never as HTML. What a user sees is decided by the server
// (row-level security); this page shows whatever the API answers.
"use strict";

const TOKEN_KEY = "healthscore.token";
const REFRESH_SECONDS = Number(
  document.querySelector('meta[name="healthscore-refresh-seconds"]').content) || 15;
const PAGE = 50;
const TIMELINE_PAGE = 25;

const $ = (id) => document.getElementById(id);
const state = { me: null, view: null, orgId: null, timer: null, missed: false, listItems: 0, visitedList: false,
  listCursor: null, supportCursor: null, timelineCursor: null, knownFactors: new Set(),
  loadedAt: null, returnTo: null, refresh: null, listStamp: null, orgStamp: null, supportStamp: null,
  openedFrom: null,
  applied: { list: null, support: null } };

// --- the token ------------------------------------------------------------------
function takeTokenFromFragment() {
  const match = location.hash.match(/^#token=([A-Za-z0-9._~+/=-]+)$/);
  if (match) {
    forget();
    sessionStorage.setItem(TOKEN_KEY, match[1]);
    state.me = null;
    state.visitedList = false;
    // the token leaves the address bar (and the history) at once
    history.replaceState(null, "", location.pathname + (state.returnTo || "#/"));
    state.returnTo = null;
  }
}
const token = () => sessionStorage.getItem(TOKEN_KEY);

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

// an answer to a request made with another token than the one now signed in (the user
// signed out, or in as someone else, while it was on its way): never shown
class StaleAnswer extends Error {}

async function api(path, options = {}) {
  const sent = token();
  const headers = { Accept: "application/json", Authorization: `Bearer ${sent}` };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    cache: "no-store",
  });
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (token() !== sent) throw new StaleAnswer(path);
  if (!response.ok) {
    if (response.status === 401) signOut(body && body.detail);
    throw new ApiError(response.status, body);
  }
  return body;
}

// One table's loads (a filter, "Show more", a refresh) may overlap: only the newest
// one's answer is shown (an older refresh landing last showed the old filter's rows,
// or undid "Show more"), and a refresh is skipped while another load is on its way.
const loads = { seq: {}, busy: {} };
async function newest(table, refresh, path) {
  if (refresh && loads.busy[table]) return null;
  const seq = (loads.seq[table] = (loads.seq[table] || 0) + 1);
  loads.busy[table] = true;
  try {
    const answer = await api(path);
    return seq === loads.seq[table] ? answer : null;
  } finally {
    if (seq === loads.seq[table]) loads.busy[table] = false;
  }
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "" && value !== false) {
      search.append(key, String(value));
    }
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// --- small helpers ------------------------------------------------------------------
// A producer's text may open bidi embeddings, overrides or isolates (U+202A-U+202E,
// U+2066-U+2069) and never close them: they would reorder whatever the page writes after
// it on the same line (an "Refund \u202E001$" turning "(+12.0 points" around). balanced()
// closes each one the text opens, at its end, and drops closers it has nothing to close
// (a lone U+2069 would end the isolate the page puts around it); isolated() also sets
// the text apart (U+2068 ... U+2069) where the page writes it into a sentence.
const BIDI_CONTROL = /[\u202A-\u202E\u2066-\u2069]/;
function balanced(text) {
  if (typeof text !== "string" || !BIDI_CONTROL.test(text)) return text;
  const open = [];
  let out = "";
  for (const ch of text) {
    if (ch === "\u202C" || ch === "\u2069") {
      const at = open.lastIndexOf(ch);
      // a PDF closes the innermost embedding only; a PDI its isolate and all inside it
      if (at < 0 || (ch === "\u202C" && at !== open.length - 1)) continue;
      open.length = at;
    } else if (ch >= "\u202A" && ch <= "\u202E") {
      open.push("\u202C");
    } else if (ch >= "\u2066" && ch <= "\u2068") {
      open.push("\u2069");
    }
    out += ch;
  }
  return out + open.reverse().join("");
}
const isolated = (text) => `\u2068${balanced(text)}\u2069`;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = balanced(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : balanced(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(balanced(String(child))));
  }
  return node;
}
const words = (name) => (name || "").replaceAll("_", " ");
// a probability rounded to a whole percent, but never to a certainty it is not:
// 0.996 is ">99%", not "100%"; 0.004 is "<1%", not "0%"
const pct = (p) => {
  if (p > 0 && p < 0.01) return "<1%";
  if (p < 1 && p > 0.99) return ">99%";
  return `${(p * 100).toFixed(0)}%`;
};
const signed = (v) => (v === null || v === undefined ? "—" : `${v > 0 ? "+" : ""}${v.toFixed(1)}`);
// Risk factor impacts (hundredths, summing exactly to score - 100) in the tenths the page
// shows, apportioned by largest remainder so that they add up to the shown score's
// tenths minus 100: each rounded alone, seven factors could be three tenths off.
const inTenths = (impacts, score) => {
  const floors = impacts.map((v) => Math.floor(Math.round(v * 100) / 10));
  const left = impacts.map((v, i) => Math.round(v * 100) - floors[i] * 10);
  const target = Math.round(Number(score.toFixed(1)) * 10) - 1000;
  let missing = target - floors.reduce((a, b) => a + b, 0);
  if (missing < 0 || missing > impacts.length) return impacts.map((v) => Math.round(v * 10) / 10);
  const order = impacts.map((_, i) => i).sort((a, b) => left[b] - left[a] || Math.abs(impacts[b]) - Math.abs(impacts[a]));
  const tenths = floors.slice();
  for (const i of order) { if (missing-- <= 0) break; tenths[i] += 1; }
  return tenths.map((t) => t / 10);
};
const shortId = (id) => id.slice(0, 8);
// a time as people read it: the date and time in the viewer's zone, named, and how long
// ago (or from now) it is, e.g. "Dec 5, 2026, 8:55 AM UTC (3 hours ago)"
const RELATIVE = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
function ago(iso) {
  const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
  const size = Math.abs(seconds);
  for (const [unit, length] of [["day", 86400], ["hour", 3600], ["minute", 60]]) {
    if (size >= length) return RELATIVE.format(Math.round(seconds / length), unit);
  }
  return RELATIVE.format(0, "second");
}
function absolute(iso) {
  return new Date(iso).toLocaleString(undefined,
    { year: "numeric", month: "short", day: "numeric", hour: "numeric", minute: "2-digit", timeZoneName: "short" });
}
function when(iso) {
  if (!iso) return "—";
  return `${absolute(iso)} (${ago(iso)})`;
}
// a table cell's time: how long ago first, the date and zone below it
function timeCell(iso) {
  if (!iso) return el("td", { text: "—" });
  return el("td", {}, el("time", { datetime: iso, text: ago(iso) }),
    el("span", { class: "sub", text: absolute(iso) }));
}
// the time of day now, with its zone: "Updated 1:28:11 PM GMT+13"
const clock = (date) => date.toLocaleTimeString(undefined, { timeZoneName: "short" });
// Re-rendering a table's rows (a refresh, an action) must not drop the keyboard focus
// to the page's start: the focus goes back to the same row (by its data key), to the
// control at the same place in it, else its first control, else its header cell.
const ROW_KEYS = ["data-organization", "data-interaction", "data-milestone"];
function keepingFocus(tbody, render) {
  const focused = document.activeElement;
  const row = focused && tbody.contains(focused) ? focused.closest("tr") : null;
  const key = row && ROW_KEYS.find((k) => row.hasAttribute(k));
  if (!key) return render();
  const value = row.getAttribute(key);
  const place = [...row.querySelectorAll("a, button")].indexOf(focused);
  const result = render();
  const again = [...tbody.rows].find((r) => r.getAttribute(key) === value);
  if (again) {
    const controls = again.querySelectorAll("a, button:not([disabled])");
    const target = controls[place] || controls[0] || again.querySelector("th");
    if (target.tagName === "TH") target.tabIndex = -1;
    target.focus({ preventScroll: true });
  }
  return result;
}

// A refresh keeps each row that did not change (the same node, where it is) and puts
// the new ones around it: focusing a fresh copy of the row the keyboard was on had a
// screen reader read it out again at every refresh. Rows that changed their order are
// all put anew (keepingFocus then finds the row again). A row is compared as it was
// drawn: what the page added to it since (a "Show all" button) is no change.
const drawnAs = new WeakMap();
function drawn(rows) {
  for (const row of rows) drawnAs.set(row, row.outerHTML);
  return rows;
}
const keyOf = (row) => ROW_KEYS.map((k) => row.getAttribute(k)).join();
// "Show more" asks for the rows after the last one shown (keyset pages): a row rescored
// since the first page may come again, and stands where the newer page puts it, once
function appendRows(tbody, fresh) {
  const keys = new Set(fresh.map(keyOf));
  keepingFocus(tbody, () => {
    for (const row of [...tbody.rows]) if (keys.has(keyOf(row))) row.remove();
    tbody.append(...drawn(fresh));
  });
}
function refreshRows(tbody, fresh) {
  const before = new Map([...tbody.rows].map((row) => [keyOf(row), row]));
  const next = drawn(fresh).map((row) => {
    const same = before.get(keyOf(row));
    return same && drawnAs.has(same) && drawnAs.get(same) === drawnAs.get(row) ? same : row;
  });
  const kept = new Set(next.filter((row) => row.parentNode === tbody));
  const order = next.filter((row) => kept.has(row));
  // a row drawn anew (its figures changed) keeps the texts its user had opened in full
  for (const row of next) {
    const old = before.get(keyOf(row));
    if (!old || old === row) continue;
    const opened = [...old.querySelectorAll(".clamp")].map((text) => text.hasAttribute("data-expanded"));
    row.querySelectorAll(".clamp").forEach((text, i) => {
      if (opened[i]) text.setAttribute("data-expanded", "");
    });
  }
  keepingFocus(tbody, () => {
    if ([...tbody.rows].filter((row) => kept.has(row)).some((row, i) => row !== order[i])) {
      tbody.replaceChildren(...next);
    } else {
      for (const row of [...tbody.rows]) if (!kept.has(row)) row.remove();
      next.forEach((row, i) => {
        if (tbody.rows[i] !== row) tbody.insertBefore(row, tbody.rows[i] || null);
      });
    }
    // the "Show all" buttons before the focus is put back: one may have had it
    watchClamps(tbody);
  });
}

// A table wider than the window (400% zoom, a phone) scrolls inside its frame: the
// frame then takes the keyboard focus, so that the arrow keys scroll it where no link
// or button in it would (browsers that do not make a scrolling box focusable
// themselves), named after its table; a frame that fits is no tab stop.
function reachWhenScrolling(frame) {
  const scrolls = frame.scrollWidth > frame.clientWidth + 1;
  if (scrolls === frame.hasAttribute("tabindex")) return;
  if (!scrolls) {
    for (const name of ["tabindex", "role", "aria-label"]) frame.removeAttribute(name);
    return;
  }
  const table = frame.querySelector("table");
  const label = table.getAttribute("aria-labelledby");
  const name = label ? $(label).textContent : (table.caption ? table.caption.textContent : "");
  frame.setAttribute("tabindex", "0");
  frame.setAttribute("role", "region");
  frame.setAttribute("aria-label", name.trim());
}
function watchScrollingFrames() {
  const frames = new ResizeObserver((entries) => {
    for (const entry of entries) reachWhenScrolling(entry.target.closest(".table-wrap"));
  });
  for (const frame of document.querySelectorAll(".table-wrap")) {
    frames.observe(frame);
    frames.observe(frame.querySelector("table"));  // its rows change its width
  }
}

// A long name or subject is cut to a few lines (.clamp). Where it is cut, a "Show all"
// button after it shows the whole, and "Show less" cuts it again: the title tooltip
// that held the whole before no keyboard could open nor pointer keep open (WCAG 2.1.1,
// 1.4.13). A screen reader reads the whole text either way; the button says whether it
// is shown (aria-expanded). Whether a text is cut depends on its box's width: measured
// when it is drawn and again whenever its box changes size (a narrower window, a text
// that changed).
const toggles = new WeakMap();
const clampWatch = new ResizeObserver((entries) => {
  for (const entry of entries) decorateClamp(entry.target);
});
function decorateClamp(text) {
  let toggle = toggles.get(text);
  if (!text.isConnected) {
    if (toggle) toggle.remove();
    clampWatch.unobserve(text);
    return;
  }
  const shown = text.hasAttribute("data-expanded");
  if (!shown && text.scrollHeight <= text.clientHeight + 1) {
    if (toggle) toggle.remove();
    toggles.delete(text);
    return;
  }
  if (!toggle) {
    // data-ui: the page's own, not the data's (a refresh leaves it where it is)
    toggle = el("button", { type: "button", class: "more-text", "data-ui": true });
    toggle.addEventListener("click", () => {
      text.toggleAttribute("data-expanded");
      decorateClamp(text);
    });
    toggles.set(text, toggle);
  }
  if (text.nextSibling !== toggle) text.after(toggle);
  const label = shown ? "Show less" : "Show all";
  if (toggle.textContent !== label) toggle.textContent = label;
  // named after the text it shows: a screen reader's list of buttons heard "Show all"
  // over and over (WCAG 2.4.6); its words first, as on screen (2.5.3)
  const name = `${label} of “${isolated(opening(text.textContent))}”`;
  if (toggle.getAttribute("aria-label") !== name) toggle.setAttribute("aria-label", name);
  toggle.setAttribute("aria-expanded", String(shown));
}
// a long text's first few words, enough to tell it from the others
function opening(text) {
  const all = text.trim().split(/\s+/);
  const head = all.slice(0, 5).join(" ");
  return head.length > 40 ? atMost(head, 40) : `${head}${all.length > 5 ? "…" : ""}`;
}
function watchClamps(root) {
  for (const text of root.querySelectorAll(".clamp")) {
    clampWatch.observe(text);
    decorateClamp(text);
  }
}

// An organization's page is drawn again at every refresh: rebuilt from scratch, it lost
// what the user was doing in it (the keyboard focus, a text selection, a "Show all"
// opened, the place a screen reader was reading). update() brings a part of the page to
// what a fresh drawing of it holds, changing only what differs: what did not change
// stays the same node. Children are matched by their data-key (an interaction's id, a
// button's action: a button keeps the listener it was drawn with, so one doing another
// action is a new button), else by their place and tag; what the page added itself
// (data-ui) and the attributes it set after drawing (KEPT_ATTRIBUTES) stay.
const KEPT_ATTRIBUTES = new Set(["tabindex", "data-expanded", "aria-disabled"]);
const isUi = (node) => node.nodeType === Node.ELEMENT_NODE && node.hasAttribute("data-ui");
const dataKey = (node) => (node.nodeType === Node.ELEMENT_NODE && node.getAttribute("data-key")) || null;
function update(target, fresh) {
  for (const { name } of [...target.attributes]) {
    if (!fresh.hasAttribute(name) && !KEPT_ATTRIBUTES.has(name)) target.removeAttribute(name);
  }
  for (const { name, value } of [...fresh.attributes]) {
    if (target.getAttribute(name) !== value) target.setAttribute(name, value);
  }
  updateChildren(target, [...fresh.childNodes]);
}
function updateChildren(target, fresh) {
  const old = [...target.childNodes].filter((node) => !isUi(node));
  const keyed = new Map(old.filter(dataKey).map((node) => [dataKey(node), node]));
  const unkeyed = old.filter((node) => !dataKey(node));
  let place = 0;
  const next = fresh.map((node) => {
    const key = dataKey(node);
    const match = key ? keyed.get(key) : unkeyed[place++];
    if (!match || match.nodeName !== node.nodeName) return node;
    if (key) keyed.delete(key);
    if (node.nodeType === Node.ELEMENT_NODE) update(match, node);
    else if (match.nodeValue !== node.nodeValue) match.nodeValue = node.nodeValue;
    return match;
  });
  const kept = new Set(next);
  for (const node of old) {
    if (kept.has(node)) continue;
    if (toggles.has(node)) toggles.get(node).remove();
    node.remove();
  }
  // in order, moving only what is out of place (a node moved loses the focus in it)
  let at = target.firstChild;
  for (const node of next) {
    while (at && isUi(at)) at = at.nextSibling;
    if (node === at) at = at.nextSibling;
    else target.insertBefore(node, at);
    const toggle = toggles.get(node);
    if (toggle && toggle.parentNode === target && node.nextSibling !== toggle) node.after(toggle);
  }
}
// a text written again only when it changed (written, its selection was lost)
function setText(node, text) {
  const value = balanced(text);
  if (node.textContent !== value) node.textContent = value;
}

function badge(kind, value) {
  return el("span", { class: `badge ${kind}-${value}`, text: words(value) });
}
function say(message, problem = false) {
  // the same message again (a refresh failing every few seconds) is not re-announced
  if ($("status").textContent === message && $("status").classList.contains("problem") === problem) return;
  $("status").textContent = message;
  $("status").classList.toggle("problem", problem);
}
const TITLE = "Customer health";
function titled(what) {
  document.title = what ? `${what} · ${TITLE}` : TITLE;
}
// after a navigation the view's heading takes the focus: a screen reader reads where
// the user is, and the next Tab starts in the view
function focusHeading() {
  const heading = document.querySelector(`#view-${state.view} h2`);
  if (!heading) return;
  heading.tabIndex = -1;
  heading.focus({ preventScroll: true });
}
// Back from an organization to the list (or the queue) it was opened from, the focus
// goes to the link it was opened by, as a browser's Back does on pages of their own (it
// went to the view's heading, and the user had to find their place again among
// hundreds of rows). A row no longer there (rescored out of the filters) is said, and
// the focus goes to the heading.
function openedFrom(event) {
  const link = event.target instanceof Element ? event.target.closest('a[href^="#/org/"]') : null;
  const row = link && link.closest("tr");
  const key = row && ROW_KEYS.find((k) => row.hasAttribute(k));
  if (key) state.openedFrom = { view: state.view, key, value: row.getAttribute(key), name: link.textContent };
}
function focusReturning(from) {
  if (!from || from.view !== state.view) {
    focusHeading();
    return;
  }
  const table = state.view === "list" ? $("org-table") : $("interaction-table");
  const row = [...table.tBodies[0].rows].find((r) => r.getAttribute(from.key) === from.value);
  const link = row && row.querySelector('a[href^="#/org/"]');
  if (link) {
    link.focus();
    return;
  }
  focusHeading();
  say(`${isolated(from.name)} is no longer in this ${state.view === "list" ? "list" : "queue"} ` +
    "(rescored, or it no longer matches the filters): you are at its start.");
}

function showView(name) {
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== `view-${name}`;
  const heading = document.querySelector(`#view-${name} h2`);
  titled(name === "org" ? "" : heading && heading.textContent);
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  state.view = name;
}
// what went wrong and what to do, in the user's words (the API's detail is for operators)
function explain(error) {
  if (!(error instanceof ApiError)) {
    return "Cannot reach the health service (the network or the service is down).";
  }
  const type = (error.problem && error.problem.type) || "";
  if (error.status === 503 && type.endsWith("too-slow")) {
    return "The service took too long to answer this request. Narrow it (a longer search text, a filter) or try again shortly.";
  }
  if (error.status === 503 || error.status === 502 || error.status === 504) {
    return "The health service is unavailable just now.";
  }
  if (error.status === 429) return "Too many requests just now; wait a moment.";
  if (error.status === 403) return "Your role may not do this.";
  if (error.status >= 500) {
    const ref = error.problem && error.problem.error_id;
    return `The request failed inside the health service${ref ? ` (reference ${ref}: report it if this keeps happening)` : ""}.`;
  }
  return `The service refused the request: ${error.message}.`;
}
// The view on screen updates itself every REFRESH_SECONDS, unless the user paused it
// (WCAG 2.2.2: a screen reader reading a table redrawn under it loses its place);
// the choice holds across the views until the page is reloaded.
function refreshEvery(refresh) {
  state.refresh = refresh;
  schedule();
}
// A view whose tab is hidden is not refreshed (nobody sees it; its requests load the
// service for nothing): the refresh it missed is made as soon as the tab is shown again.
function schedule() {
  clearInterval(state.timer);
  state.missed = false;
  state.timer = state.refresh && $("auto-update").checked
    ? setInterval(() => {
      if (document.hidden) state.missed = true;
      else state.refresh();
    }, REFRESH_SECONDS * 1000) : null;
}
function shownAgain() {
  if (document.hidden || !state.missed || !state.timer) return;
  // a period from now, not from the tick that was missed
  schedule();
  state.refresh();
}
// when what a view shows was loaded, and whether it updates: the organization's page
// said neither and the queue only the first, so figures paused (or left open over
// lunch) passed for current ones
function stampUpdated() {
  for (const [id, at] of [["list-updated", state.listStamp], ["org-updated", state.orgStamp],
    ["support-updated", state.supportStamp]]) {
    if (!at) continue;
    $(id).textContent = `Updated ${clock(at)}; ` +
      ($("auto-update").checked ? `refreshes every ${REFRESH_SECONDS} s` : "updates paused") +
      (id === "support-updated" ? "" : freshnessText());
  }
}
// "Updated" is when the browser fetched; how far the scores themselves are behind the
// events the service applied is the read model's staleness (GET /api/v1/freshness)
const STALE_SECONDS = 60;
function freshnessText() {
  const s = state.staleness;
  if (s === null || s === undefined) return "";
  if (s < STALE_SECONDS) return ". Scores are current.";
  const behind = s < 7200 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`;
  return `. Scores are about ${behind} behind the events applied: the service is catching up.`;
}
async function loadFreshness() {
  try {
    state.staleness = (await api("/api/v1/freshness")).read_model_staleness_seconds;
  } catch (error) {
    state.staleness = null;  // unknown: say nothing rather than "current"
  }
  stampUpdated();
}

function fail(error) {
  if ((error instanceof ApiError && error.status === 401) || error instanceof StaleAnswer) return;
  const retry = state.timer ? ` The page tries again every ${REFRESH_SECONDS} s.`
    : (state.refresh ? " Updates are paused: turn them on, or reload the page, to try again."
      : " Reload the page to try again.");
  const shown = state.loadedAt
    ? ` What you see was loaded at ${clock(state.loadedAt)}.`
    : "";
  say(`${explain(error)}${shown}${retry}`, true);
}
// A filter whose answer failed: the rows of the previous filters must not stand under
// the new ones, as if they matched them; the table is emptied (the refresh retries).
function failedFilter(table) {
  return (error) => {
    if (!(error instanceof ApiError && error.status === 401) && !(error instanceof StaleAnswer)) {
      const node = $(table);
      node.tBodies[0].replaceChildren();
      node.parentElement.hidden = true;
      state.loadedAt = null;
      if (table === "org-table") {
        state.listItems = 0;
        $("org-more").hidden = true;
        $("org-empty").hidden = true;
      } else {
        $("interaction-more").hidden = true;
        $("interaction-empty").hidden = true;
      }
    }
    fail(error);
  };
}
function loaded() {
  state.loadedAt = new Date();
  if ($("status").classList.contains("problem")) say("");
}
// What a filter, Clear or "Show more" brought is said in the status line: a screen
// reader reads it out, where the table changing says nothing (WCAG 4.1.3); a refresh
// says nothing.
function tellShown(count, more, [one, many], none) {
  if (count === 0) say(none);
  else say(`${count} ${count === 1 ? one : many} shown${more ? "; more to show" : ""}.`);
}
// "Show more" hides itself with the last page: the focus it had would fall to the
// page's start; it goes to the first item the page brought (a row's link or button,
// else the row's header cell or the item itself, focusable by script only)
function focusBrought(button, first) {
  const lost = !document.activeElement || document.activeElement === document.body;
  if (!button.hidden || !first || !lost) return;
  const target = first.querySelector("a, button") || first.querySelector("th") || first;
  if (!target.matches("a, button")) target.tabIndex = -1;
  target.focus();
}

// --- sign in and out ------------------------------------------------------------------
// Nothing one user was shown stays in the page for the next one signed in in the same
// tab: not under the sign-in form, not while the next user's first answers are on
// their way, not if they fail (the rows would stand as the new user's).
function forget() {
  for (const table of ["org-table", "interaction-table", "factor-table", "milestone-table", "history-table"]) {
    $(table).tBodies[0].replaceChildren();
  }
  for (const id of ["factor-names", "org-timeline", "org-facts", "org-components", "org-usage",
    "org-alert", "org-chart"]) {
    $(id).replaceChildren();
  }
  for (const id of ["org-title", "org-subtitle", "org-score", "org-score-meaning", "chart-summary",
    "timeline-count", "milestone-from-profile", "list-updated", "org-updated", "support-updated", "who-name",
    "who-role", "trust-backtest", "trust-live"]) {
    $(id).textContent = "";
  }
  $("who-name").removeAttribute("data-expanded");
  $("org-body").hidden = true;
  $("trust").hidden = true;
  for (const id of ["org-more", "interaction-more", "timeline-more", "org-empty", "interaction-empty"]) {
    $(id).hidden = true;
  }
  // the last user's searches are theirs too
  for (const id of ["f-factor", "f-q", "s-q"]) {
    $(id).value = "";
    $(id).setCustomValidity("");
  }
  // and the filters they chose (set here, not by form.reset(): its handler would load)
  for (const form of [$("list-filters"), $("support-filters")]) {
    for (const field of form.elements) {
      if (field instanceof HTMLSelectElement) {
        for (const option of field.options) option.selected = option.defaultSelected;
      } else if (field.type === "checkbox") {
        field.checked = field.defaultChecked;
      }
    }
  }
  state.knownFactors = new Set();
  Object.assign(state, { orgId: null, listItems: 0, listCursor: null, supportCursor: null,
    timelineCursor: null, loadedAt: null, listStamp: null, orgStamp: null, supportStamp: null,
  openedFrom: null,
    applied: { list: null, support: null } });
  // answers still on their way belong to no table now
  for (const table of Object.keys(loads.seq)) {
    loads.seq[table] += 1;
    loads.busy[table] = false;
  }
  say("");
}

function signOut(reason) {
  // signed in until now: the focus was in what is about to be hidden
  const wasIn = !$("who").hidden;
  sessionStorage.removeItem(TOKEN_KEY);
  state.me = null;
  forget();
  refreshEvery(null);
  $("nav").hidden = true;
  $("who").hidden = true;
  $("signin-reason").hidden = !reason;
  $("signin-reason").textContent = reason
    ? `Signed out: ${reason}. Sign in again to continue where you were.` : "";
  // signed out mid-session (an expired token): come back to the same page after signing in
  if (reason && location.hash.startsWith("#/")) state.returnTo = location.hash;
  showView("signin");
  // the focus would fall to the page's start, or stay on the form's button while the
  // reason appears above it, and a screen reader say nothing: it goes to why the user
  // was signed out or refused (read out), else, signed in until now, to the heading
  if (reason) {
    $("signin-reason").tabIndex = -1;
    $("signin-reason").focus();
  } else if (wasIn) {
    focusHeading();
  }
}

async function signIn() {
  say("");
  state.me = await api("/api/v1/me");
  $("who-name").textContent = balanced(state.me.full_name || state.me.email || shortId(state.me.user_id));
  $("who-name").removeAttribute("data-expanded");
  $("who-role").textContent = state.me.role;
  $("who-role").className = `badge role-${state.me.role}`;
  $("who").hidden = false;
  $("nav").hidden = false;
  // a long name is cut to two lines, with its "Show all" (a title tooltip opened by no key)
  watchClamps($("who"));
}

// --- the at-risk list -----------------------------------------------------------------
// The filters a table was last loaded with, which its refreshes, "Show more" and coming
// back to it keep: a search or factor typed and not yet applied (no Enter, no Apply)
// was applied by the next refresh, unasked and unannounced (the rows changed under the
// user, or vanished), and "Show more" brought the next page of another filter's rows.
function filtersFor(table, read, keep) {
  if (!keep || !state.applied[table]) state.applied[table] = read();
  return state.applied[table];
}

// the search box takes a name or an id's start: four or more hex digits and hyphens
// with a digit among them are an id ("3f2a"); anything else is a name's words ("bloom",
// "cafe", and names such as "F5", "B2B" or "365")
const ID_START = /^(?=[^0-9]*[0-9])[0-9a-fA-F-]{4,36}$/;

function listParams() {
  const form = $("list-filters");
  const data = new FormData(form);
  const search = data.get("q").trim();
  const byId = ID_START.test(search);
  return {
    health_status: data.get("health_status"),
    risk_level: data.get("risk_level"),
    // as the list writes a factor ("few logins") or as the API names it ("few_logins")
    factor: data.get("factor").trim().toLowerCase().replace(/[\s_]+/g, "_"),
    q: byId ? search : null,
    name: byId ? null : search,
    sort: data.get("sort"),
  };
}

function orgRow(org) {
  const name = org.organization_name || `Organization ${shortId(org.organization_id)}`;
  const reasons = org.top_risk_factors.filter((f) => f.impact < 0).map((f) => words(f.factor));
  for (const f of org.top_risk_factors) state.knownFactors.add(f.factor);
  const link = el("a", { href: `#/org/${org.organization_id}`, text: name, class: "clamp" });
  return el("tr", { "data-organization": org.organization_id },
    el("th", { scope: "row" }, link, el("span", { class: "id", text: shortId(org.organization_id) })),
    el("td", { class: "num", text: org.health_score.toFixed(1) }),
    el("td", {}, badge("band", org.health_status)),
    el("td", { class: "num", text: pct(org.churn_probability) }),
    el("td", {}, badge("risk", org.risk_level)),
    el("td", { class: `num ${org.score_change_7d < 0 ? "down" : ""}`, text: signed(org.score_change_7d) }),
    el("td", { class: `num ${org.score_change_30d < 0 ? "down" : ""}`, text: signed(org.score_change_30d) }),
    el("td", { text: reasons.join(", ") || "—" }),
    timeCell(org.scored_at));
}

async function loadList({ append = false, refresh = false, told = false, again = false } = {}) {
  const params = filtersFor("list", listParams, refresh || append || again);
  // a refresh, or coming back to the list, reloads what is on screen (up to 200 rows), in
  // one request: "Show more" must not be undone by opening an organization
  const limit = refresh || again ? Math.min(Math.max(state.listItems, PAGE), 200) : PAGE;
  const page = await newest("list", refresh, `/api/v1/organizations${query({ ...params, limit,
    cursor: append ? state.listCursor : null })}`);
  if (!page) return;
  const body = $("org-table").tBodies[0];
  const rows = page.items.map(orgRow);
  if (append) appendRows(body, rows);
  else refreshRows(body, rows);
  watchClamps(body);
  state.listItems = body.rows.length;
  state.listCursor = page.next_cursor;
  $("org-more").hidden = !page.next_cursor;
  $("org-empty").hidden = body.rows.length > 0;
  // no empty table under an empty list, and why it is empty: the filters, or the role
  $("org-table").parentElement.hidden = body.rows.length === 0;
  const filtered = params.health_status || params.risk_level || params.factor || params.q || params.name;
  $("org-empty").textContent = filtered
    ? "No organization visible to you matches these filters; Clear shows them all."
    : `No organizations are visible to you: your role (${state.me ? state.me.role : "unknown"}) ` +
      "does not include any organization's health. Ask an administrator if you need it.";
  $("factor-names").replaceChildren(
    ...[...state.knownFactors].sort().map((f) => el("option", { value: words(f) })));
  state.listStamp = new Date();
  stampUpdated();
  loadFreshness();
  loaded();
  if (told || append) {
    tellShown(body.rows.length, page.next_cursor, ["organization", "organizations"],
      $("org-empty").textContent);
  }
  if (append) focusBrought($("org-more"), rows[0]);
}

// --- how far to trust the scores (admins: who sees the scores) ------------------------------
const days = (d) => `${d.toFixed(d < 10 ? 1 : 0)} days`;
// a model file's words are a line, not a page (whole characters: no half surrogate pair)
const atMost = (text, n) => {
  const chars = Array.from(text);
  return chars.length > n ? `${chars.slice(0, n).join("")}…` : text;
};

function backtestText(q) {
  const b = q.backtest;
  if (b.roc_auc_30d === null && b.churners_alerted === null) {
    return `Model ${isolated(q.score_model_version)} carries no test figures: it was not fitted by ` +
      "healthscore fit, so nobody has measured how well it predicts churn.";
  }
  const parts = [];
  if (b.roc_auc_30d !== null) {
    parts.push(`it ranked an organization that churned within 30 days as riskier than one ` +
      `that stayed ${pct(b.roc_auc_30d)} of the time`);
  }
  if (b.churners_alerted !== null) {
    let alerted = `it alerted ${pct(b.churners_alerted)} of the organizations that churned`;
    if (b.median_lead_days !== null) alerted += `, a median ${days(b.median_lead_days)} ahead`;
    parts.push(alerted);
  }
  if (b.false_alerts_per_100_healthy_per_month !== null) {
    parts.push(`it raised ${b.false_alerts_per_100_healthy_per_month.toFixed(1)} false alerts ` +
      "a month per 100 organizations that stayed");
  }
  const tested = b.held_out_organizations !== null
    ? `${b.held_out_organizations} organizations held out of its fit` : "organizations held out of its fit";
  // the model file's own words: isolated, so a bidi control in them reorders nothing else
  const source = b.source ? ` (${isolated(atMost(b.source, 200))})` : "";
  return `Before it went live, model ${isolated(q.score_model_version)} was tested on ` +
    `${tested}${source}: ` +
    `${parts.join("; ")}.`;
}

function liveText(q) {
  const a = q.live_alerts;
  const labelled = a.episodes_churned + a.episodes_retained;
  const pending = a.episodes_pending
    ? ` ${a.episodes_pending} more await their outcome (60 days after the alert).` : "";
  let text = labelled
    ? `Live: ${a.episodes_churned} of the ${labelled} alerts whose outcome is known were ` +
      `followed by churn within 60 days (${pct(a.precision)}).${pending}`
    : `Live: no alert's outcome is known yet.${pending}`;
  if (a.churned_organizations) {
    text += ` ${a.churned_organizations_alerted} of the ${a.churned_organizations} organizations ` +
      "known to have churned were alerted first";
    text += a.lead_days ? `, a median ${days(a.lead_days[1])} ahead.` : ".";
  }
  // the outcomes of every alert the service has raised, under whichever model was live
  // then: after a promotion they are mostly the earlier models' (review 32b, F8)
  return `${text} Figures as of ${absolute(q.computed_at)}, over every model's alerts.`;
}

async function loadTrust() {
  if (!state.me || state.me.role !== "admin") {
    $("trust").hidden = true;
    return;
  }
  let quality;
  try {
    quality = await api("/api/v1/score-quality");
  } catch (error) {
    // not computed yet (the service labels its alerts once a minute): nothing to show
    if (error instanceof ApiError && error.status === 404) {
      $("trust").hidden = true;
      return;
    }
    throw error;
  }
  $("trust-backtest").textContent = backtestText(quality);
  $("trust-live").textContent = liveText(quality);
  $("trust").hidden = false;
}

// --- the organization page --------------------------------------------------------------
const COMPONENTS = [
  ["engagement", "Engagement"], ["adoption", "Adoption"], ["milestones", "Milestones"],
  ["support", "Support"], ["growth", "Growth"],
];

// achieved is the score's count: the rows below (recorded from the events) and the
// milestones known only from the CRM profile, which have no row to acknowledge
function milestoneCount(m) {
  const recorded = m.acknowledged + m.unacknowledged;
  if (!m.from_profile) return `${m.achieved} of 17 (${m.unacknowledged} to acknowledge)`;
  return `${m.achieved} of 17: ${recorded} recorded (${m.unacknowledged} to acknowledge)` +
    ` + ${m.from_profile} from the CRM profile`;
}

function renderOrganization(org) {
  const name = balanced(org.organization_name || `Organization ${shortId(org.organization_id)}`);
  setText($("org-title"), name);
  $("org-title").classList.add("clamp");
  titled(name);
  setText($("org-subtitle"),
    `${org.organization_id}${org.plan ? ` · plan ${isolated(org.plan)}` : ""} · scored ${when(org.scored_at)}`);
  setText($("org-score"), org.health_score.toFixed(1));
  setText($("org-score-meaning"), `${org.health_score.toFixed(1)} of 100 is in the ${words(org.health_status)} band ` +
    "(critical below 40, at risk 40 to 60, good 60 to 80, excellent from 80). " +
    `Churn probability ${pct(org.churn_probability)}: the model's estimate of how likely this ` +
    "organization is to leave, from its score and its 30-day change.");
  const band = badge("band", org.health_status);
  band.textContent = `${words(org.health_status)} band`;
  const risk = badge("risk", org.risk_level);
  risk.textContent = `${words(org.risk_level)} churn risk`;
  update($("org-band"), Object.assign(band, { id: "org-band" }));
  update($("org-risk"), Object.assign(risk, { id: "org-risk" }));
  const facts = [
    ["Churn probability", pct(org.churn_probability)],
    ["Change, 7 days", signed(org.score_change_7d)],
    ["Change, 30 days", signed(org.score_change_30d)],
    ["Since the previous score", org.trend
      ? `${org.trend} (${org.previous_score.toFixed(1)} → ${org.health_score.toFixed(1)})` : "—"],
    ["Active users (30 days)", String(org.active_users_30d)],
    ["Open interactions", String(org.open_interactions_count)],
    ["Overdue follow-ups", String(org.overdue_follow_ups)],
    ["Milestones", milestoneCount(org.milestones)],
    ["Last activity", when(org.last_activity_at)],
  ];
  updateChildren($("org-facts"), facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  const fromProfile = org.milestones.from_profile;
  $("milestone-from-profile").hidden = fromProfile === 0;
  const recorded = org.milestones.acknowledged + org.milestones.unacknowledged;
  const more = recorded > 0 ? " more" : "";
  setText($("milestone-from-profile"), `${fromProfile === 1 ? `One${more} milestone was` : `${fromProfile}${more} milestones were`} ` +
    "achieved before the organization's events reached the service (from its CRM profile): " +
    "counted in the score, nothing to acknowledge or reward.");
  updateChildren($("org-components"), COMPONENTS.map(([key, label]) => {
    const value = org.components[key] ?? 0;
    return el("li", {},
      el("span", { class: "label", id: `c-${key}`, text: label }),
      el("meter", { min: "0", max: "100", low: "40", high: "60", optimum: "100",
        value: String(value), "aria-labelledby": `c-${key}` }),
      el("span", { class: "num", text: value.toFixed(0) }));
  }));
  const factors = org.risk_factors.filter((f) => f.impact !== 0);
  const shown = inTenths(factors.map((f) => f.impact), org.health_score);
  updateChildren($("factor-table").tBodies[0], factors.map((f, i) =>
    el("tr", { class: f.impact < 0 ? "hurts" : "" },
      el("th", { scope: "row", text: words(f.factor) }),
      el("td", { class: `num ${f.impact < 0 ? "down" : ""}`, text: signed(shown[i]) }),
      el("td", {}, el("span", { class: "clamp clamp-6", text: inWords(f) })))));
  $("factor-empty").hidden = factors.length > 0;
  $("factor-table").parentElement.hidden = factors.length === 0;
  const together = shown.reduce((a, b) => a + b, 0);
  const score = org.health_score.toFixed(1);
  // a score written before every small factor was listed: its factors do not add up to
  // it, and the equation would be false
  const addsUp = Math.round(together * 10) === Math.round(Number(score) * 10) - 1000;
  setText($("factor-sum"), factors.length === 0 ? "" : addsUp
    ? `Together ${signed(together)} points: ` +
      `100 ${together < 0 ? "−" : "+"} ${Math.abs(together).toFixed(1)} = ${score}, the score.`
    : `Together ${signed(together)} points. They do not add up to the ${(100 - Number(score)).toFixed(1)} ` +
      "points the score is under 100: it was scored before every small factor was listed.");
  $("factor-sum").hidden = factors.length === 0;
  const usage = Object.entries(org.feature_usage).sort((a, b) => b[1] - a[1]);
  updateChildren($("org-usage"), (usage.length
    ? usage.map(([feature, uses]) => el("li", {}, el("span", { text: words(feature) }),
      el("span", { class: "num", text: String(uses) })))
    : [el("li", { class: "muted", text: "No feature usage in the window." })]));
  const alert = org.last_alert;
  updateChildren($("org-alert"), (alert
    ? [el("dl", { class: "facts" },
      el("dt", { text: "Kind" }), el("dd", {}, badge("alert", alert.kind)),
      el("dt", { text: "Why it fired" }), el("dd", { text: TRIGGERS[alert.trigger] || words(alert.trigger) || "—" }),
      el("dt", { text: "Risk level" }), el("dd", { text: words(alert.risk_level) }),
      el("dt", { text: "Score then" }), el("dd", { text: alert.health_score === null ? "—" : alert.health_score.toFixed(1) }),
      // the events' time the alert's score holds for: a catch-up or a replay decides
      // long after the events, and "raised now at 45" beside today's 14 needs it
      el("dt", { text: "Score as of" }), el("dd", { text: when(alert.scored_at) }),
      el("dt", { text: "Raised" }), el("dd", { text: when(alert.created_at) }),
      el("dt", { text: "Published" }), el("dd", { text: alert.published_at ? when(alert.published_at) : "pending" })),
    ...pathToHealthy(alert, org)]
    : [el("p", { class: "muted", text: "No churn-risk alert yet." })]));
}

// a factor's detail as the page writes factors: the smaller factors' row names them as
// the API does (few_logins_per_user), beside rows that say "few logins"
function inWords(f) {
  if (!f.detail) return "—";
  return f.factor === "minor_factors" ? f.detail.replace(/[a-z0-9]+(?:_[a-z0-9]+)+/g, words) : f.detail;
}

const TRIGGERS = {
  probability_threshold: "the churn probability crossed the alert threshold",
  score_drop: "the score dropped sharply",
  escalation_step: "the risk level rose a step",
  recovery: "the organization is out of risk again",
};

// what to do: the alert's path to healthy, the fewest actions out of risk, each with the
// score points the model credits it with; an interaction named by its id gets its subject
function pathToHealthy(alert, org) {
  if (!alert.path_to_healthy) return [];  // an alert from before the field existed
  // a recovery names no way out of risk because it is out (its out_of_risk is not a
  // raise's: no sharp drop to look into)
  if (alert.kind === "recovered") return [];
  if (alert.path_to_healthy.length === 0) {
    // why, as the alert said (no_path_reason); an alert from before the field: most
    // often a signal only time heals (a cancellation request, an escalation) holding the
    // score under its ceiling
    const why = {
      out_of_risk: "The churn probability was already below the recovery threshold when " +
        "the alert was raised (a sharp drop in the score raised it, see the reasons above): " +
        "no action is needed to leave risk; find out what made the score drop.",
      time_heals_only: "No action the model counts would have lifted the score when the " +
        "alert was raised: the risk is in signals only time heals (see the reasons above, " +
        "e.g. recent complaints or negative sentiment). Talk to the customer; the score " +
        "rises as those signals fade.",
    }[alert.no_path_reason] || "No action the model counts would have lifted the " +
      "score when the alert was raised: a signal only time heals (see the reasons above, e.g. " +
      "a cancellation request) held it under its ceiling. Talk to the customer; the score " +
      "rises as that signal fades.";
    return [el("h4", { id: "path-title", text: "What to do: the way out of risk" }),
      el("p", { id: "org-path-none", text: why })];
  }
  // the list also holds interactions no longer open whose follow-up is pending: a step
  // about one of those names it as no longer open
  const open = org.open_interactions.filter((i) => i.status === "open");
  const subjects = new Map(open.map((i) => [i.id, i.subject]));
  const everyOpenListed = open.length >= org.open_interactions_count;
  const steps = alert.path_to_healthy.map((step) => {
    // the interaction the step is about is data (interaction_id); only an alert from
    // before the field names it in its text alone
    const id = step.interaction_id !== undefined ? step.interaction_id
      : (step.action.match(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/) || [null])[0];
    const effect = el("span", { class: "muted", text: ` (+${step.impact.toFixed(1)} points, ${words(step.factor)})` });
    const action = step.action[0].toUpperCase() + step.action.slice(1);
    if (!id || !step.action.includes(id)) return el("li", {}, el("span", { text: action }), effect);
    // the interaction by its subject (its id is no words for a reader), a link to it in
    // the timeline below; one no longer among the open ones by the link alone
    const [before, after] = action.split(id, 2);
    const subject = subjects.get(id);
    const link = el("a", { href: `#/org/${org.organization_id}`, "data-interaction": id,
      text: subject ? `“${isolated(subject)}”` : "see it below" });
    const text = subject ? [before, link, after]
      : [before.trimEnd(), everyOpenListed ? " (no longer open: " : " (", link, `)${after}`];
    return el("li", {}, el("span", {}, ...text), effect);
  });
  return [el("h4", { id: "path-title", text: "What to do: the way out of risk" }),
    el("ol", { class: "path", id: "org-path", "aria-labelledby": "path-title" }, ...steps),
    el("p", { class: "muted", text: "As named when the alert was raised, largest effect first. " +
      "Signals only time heals (recent complaints, cancellation requests, sentiment) are not actions." })];
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = balanced(text);
  return node;
}

function renderChart(history) {
  const figure = $("org-chart");
  const points = history.points;
  const table = $("history-table").tBodies[0];
  updateChildren(table, points.slice().reverse().map((p) => el("tr", {},
    el("th", { scope: "row", text: p.day }), el("td", { class: "num", text: p.health_score.toFixed(1) }),
    el("td", { class: "num", text: pct(p.churn_probability) }), el("td", { text: words(p.risk_level) }))));
  $("history-table").closest("details").hidden = points.length === 0;
  if (points.length === 0) {
    updateChildren(figure, [el("p", { class: "muted", text: "No score history in this period." })]);
    setText($("chart-summary"), "");
    return;
  }
  const width = 720, height = 240, left = 36, right = 12, top = 12, bottom = 28;
  const t0 = new Date(points[0].day).getTime();
  const t1 = Math.max(new Date(points[points.length - 1].day).getTime(), t0 + 86400000);
  const x = (d) => left + ((new Date(d).getTime() - t0) / (t1 - t0)) * (width - left - right);
  const y = (v) => top + (1 - v / 100) * (height - top - bottom);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `Health score by day, ${points.length} days` });
  // the bands behind the line: critical < 40 <= at risk < 60 <= good < 80 <= excellent
  for (const [from, to, cls] of [[0, 40, "critical"], [40, 60, "at_risk"], [60, 80, "good"], [80, 100, "excellent"]]) {
    chart.append(svg("rect", { x: left, y: y(to), width: width - left - right, height: y(from) - y(to), class: `zone zone-${cls}` }));
    // the band's name in it: its colour is not the only way to tell
    chart.append(svg("text", { x: left + 6, y: y(to) + 13, class: "zone-label" }, words(cls)));
  }
  for (const v of [0, 40, 60, 80, 100]) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), class: "grid" }));
    chart.append(svg("text", { x: left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, String(v)));
  }
  chart.append(svg("text", { x: left, y: height - 8, class: "axis" }, points[0].day));
  chart.append(svg("text", { x: width - right, y: height - 8, class: "axis", "text-anchor": "end" },
    points[points.length - 1].day));
  const path = (key, scale) => points.map((p, i) => `${i ? "L" : "M"}${x(p.day).toFixed(1)},${y(scale(p[key])).toFixed(1)}`).join(" ");
  chart.append(svg("path", { d: path("churn_probability", (v) => v * 100), class: "line churn" }));
  chart.append(svg("path", { d: path("health_score", (v) => v), class: "line score" }));
  for (const p of points) {
    const dot = svg("circle", { cx: x(p.day).toFixed(1), cy: y(p.health_score).toFixed(1), r: 3, class: "dot" });
    dot.append(svg("title", {}, `${p.day}: score ${p.health_score.toFixed(1)}, churn ${pct(p.churn_probability)}`));
    chart.append(dot);
  }
  const legend = el("figcaption", { class: "legend" },
    el("span", { class: "key key-score", text: "Health score" }),
    el("span", { class: "key key-churn", text: "Churn probability (%)" }));
  updateChildren(figure, [chart, legend]);
  const first = points[0], last = points[points.length - 1];
  setText($("chart-summary"), `From ${first.health_score.toFixed(1)} on ${first.day} to ` +
    `${last.health_score.toFixed(1)} on ${last.day} (days in UTC); churn probability ${pct(first.churn_probability)} to ${pct(last.churn_probability)}.`);
}

function milestoneActions(orgId, m) {
  const cell = el("td", { class: "actions" });
  const base = `/api/v1/organizations/${orgId}/milestones/${m.milestone_type}`;
  const act = async (button, path, body, done) => {
    // busy, not disabled: a disabled button drops the keyboard focus to the page's start
    if (button.getAttribute("aria-disabled") === "true") return;
    button.setAttribute("aria-disabled", "true");
    try {
      await api(`${base}/${path}`, { method: "POST", body });
      say(done);
      await loadMilestones(orgId);
    } catch (error) {
      button.removeAttribute("aria-disabled");
      fail(error);
      // refused because the milestone changed meanwhile (a colleague recorded its reward
      // or acknowledged it, the updates paused): the row kept offering what could no
      // longer be done; it shows the milestone as it is now, and the message says so
      if (error instanceof ApiError && error.status === 409) {
        await loadMilestones(orgId).catch(() => {});
        say(`Not recorded: ${error.message}. The row shows the milestone as it is now.`, true);
      }
    }
  };
  if (!m.acknowledged_at) {
    const button = el("button", { type: "button", "data-key": `acknowledge ${base}`, "aria-label": `Acknowledge ${words(m.milestone_type)}`, text: "Acknowledge" });
    button.addEventListener("click", () => act(button, "acknowledge", undefined, `${words(m.milestone_type)} acknowledged`));
    cell.append(button);
  } else if (m.reward_status === "pending") {
    // each name starts with the words on the button (WCAG 2.5.3: "click Reward
    // delivered" by voice must find it), then says which milestone's
    const deliver = el("button", { type: "button", "data-key": `delivered ${base}`, "aria-label": `Reward delivered for ${words(m.milestone_type)}`, text: "Reward delivered" });
    const decline = el("button", { type: "button", class: "secondary", "data-key": `declined ${base}`, "aria-label": `Declined, the reward for ${words(m.milestone_type)}`, text: "Declined" });
    deliver.addEventListener("click", () => act(deliver, "reward", { outcome: "delivered" }, "reward recorded as delivered"));
    decline.addEventListener("click", () => act(decline, "reward", { outcome: "declined" }, "reward recorded as declined"));
    cell.append(deliver, " ", decline);
  } else {
    cell.append(el("span", { class: "muted", text: "—" }));
  }
  return cell;
}

async function loadMilestones(orgId) {
  const list = await api(`/api/v1/organizations/${orgId}/milestones`);
  // another organization opened while this answer was on its way
  if (state.orgId !== orgId) return;
  const body = $("milestone-table").tBodies[0];
  keepingFocus(body, () => updateChildren(body, list.items.map((m) => {
    const reward = m.reward_type
      ? `${words(m.reward_type)}${m.reward_value ? ` (${m.reward_value})` : ""}: ${m.reward_status}`
      : "—";
    const acknowledged = m.acknowledged_at
      ? `${when(m.acknowledged_at)} by ${isolated(m.acknowledged_by_name || (m.acknowledged_by ? shortId(m.acknowledged_by) : "—"))}`
      : "not yet";
    return el("tr", { "data-milestone": m.milestone_type, "data-key": m.milestone_type },
      el("th", { scope: "row", text: words(m.milestone_type) }),
      timeCell(m.achieved_at),
      el("td", { class: "acknowledged" }, el("span", { class: "clamp", text: acknowledged })),
      el("td", { text: reward }),
      milestoneActions(orgId, m));
  })));
  watchClamps(body);
  $("milestone-empty").hidden = list.items.length > 0;
  // an empty table's header row above "No milestones" says nothing
  $("milestone-table").parentElement.hidden = list.items.length === 0;
}

function interactionItem(i) {
  const follow = i.follow_up_required && !i.follow_up_completed_at && i.follow_up_at
    ? el("span", { class: i.overdue ? "overdue" : "muted",
      text: i.overdue ? `Follow-up overdue since ${when(i.follow_up_at)}` : `Follow-up due ${when(i.follow_up_at)}` })
    : null;
  return el("li", { class: i.overdue ? "overdue-item" : "", "data-key": i.id },
    el("p", { class: "when", text: when(i.opened_at || i.last_event_at) }),
    el("p", {}, el("strong", { class: "clamp",
      text: i.subject || words(i.interaction_type) || "Interaction" })),
    el("p", { class: "meta" }, badge("status", i.status), " ", words(i.interaction_type),
      i.channel ? ` · ${words(i.channel)}` : "", ` · priority ${i.priority}`,
      i.sentiment ? ` · ${words(i.sentiment)}` : ""),
    follow);
}

async function loadOrganization(orgId, { refresh = false } = {}) {
  const days = $("history-days").value;
  // a refresh reloads as many interactions as are on screen (up to 200), in one request
  const shown = $("org-timeline").children.length;
  const limit = refresh ? Math.min(Math.max(shown, TIMELINE_PAGE), 200) : TIMELINE_PAGE;
  const [org, history, interactions] = await Promise.all([
    api(`/api/v1/organizations/${orgId}`),
    api(`/api/v1/organizations/${orgId}/history?days=${days}`),
    newest("timeline", refresh, `/api/v1/interactions${query({ organization_id: orgId, limit })}`),
  ]);
  if (state.orgId !== orgId) return;
  renderOrganization(org);
  renderChart(history);
  state.historyDays = days;
  if (interactions) {
    updateChildren($("org-timeline"), interactions.items.map(interactionItem));
    showTimelinePage(interactions);
  }
  $("org-body").hidden = false;
  watchClamps($("view-org"));
  // with the facts they are counted in: a milestone achieved or acknowledged since the
  // page opened was counted above while its row was missing or still said "Acknowledge"
  await loadMilestones(orgId);
  if (state.orgId !== orgId) return;
  state.orgStamp = new Date();
  stampUpdated();
  loadFreshness();
  loaded();
}

async function loadMoreInteractions(orgId) {
  const page = await newest("timeline", false, `/api/v1/interactions${query({ organization_id: orgId,
    limit: TIMELINE_PAGE, cursor: state.timelineCursor })}`);
  if (!page || state.orgId !== orgId) return;
  const items = page.items.map(interactionItem);
  $("org-timeline").append(...items);
  watchClamps($("org-timeline"));
  showTimelinePage(page);
  tellShown($("org-timeline").children.length, page.next_cursor, ["interaction", "interactions"], "");
  focusBrought($("timeline-more"), items[0]);
}

// An alert's action about an interaction leads to it in the timeline (older pages
// brought in as needed): the focus on it, the page staying the organization's.
async function showInteraction(id) {
  const orgId = state.orgId;
  const find = () => [...$("org-timeline").children].find((item) => item.dataset.key === id);
  for (let pages = 0; !find() && state.timelineCursor && state.orgId === orgId && pages < 10; pages++) {
    await loadMoreInteractions(orgId);
  }
  const item = find();
  if (state.orgId !== orgId) return;
  if (!item) {
    say("That interaction is not among the organization's interactions shown to you.");
    return;
  }
  item.tabIndex = -1;
  item.focus();
}

function showTimelinePage(page) {
  const shown = $("org-timeline").children.length;
  state.timelineCursor = page.next_cursor;
  $("timeline-more").hidden = !page.next_cursor;
  $("timeline-empty").hidden = shown > 0;
  $("timeline-count").textContent = shown === 0 ? ""
    : `Newest first; ${shown}${page.next_cursor ? " shown, more below" : (shown === 1 ? " interaction" : " interactions")}.`;
}

// --- the support view -----------------------------------------------------------------
function supportParams() {
  const data = new FormData($("support-filters"));
  const q = data.get("q").trim();
  return {
    q: q.length >= 3 ? q : null,
    // an overdue follow-up may belong to a resolved interaction (a check-in scheduled
    // after the fix): "overdue only" looks at every status
    status: data.get("overdue") ? null : data.get("status"),
    assigned_to: data.get("mine") ? "me" : null,
    overdue: data.get("overdue") ? "true" : null,
  };
}

function interactionRow(i) {
  const follow = i.follow_up_at && !i.follow_up_completed_at
    ? el("span", { class: i.overdue ? "overdue" : "", text: `${i.overdue ? "Overdue: " : ""}${when(i.follow_up_at)}` })
    : "—";
  // a name is there only when the organization is visible to the user: then it is a link
  const org = i.organization_name
    ? el("a", { href: `#/org/${i.organization_id}`, class: "clamp", text: i.organization_name })
    : shortId(i.organization_id);
  return el("tr", { class: i.overdue ? "overdue-item" : "", "data-interaction": i.id },
    // "overdue" in words beside the subject: the row's colour is not the only sign, and
    // on a phone the follow-up column is scrolled out of view
    el("th", { scope: "row" }, el("span", { class: "clamp", text: i.subject || "(no subject)" }),
      i.overdue ? el("span", { class: "sub overdue", text: "Follow-up overdue" }) : null),
    el("td", {}, org),
    el("td", { text: words(i.interaction_type) || "—" }),
    el("td", {}, badge("priority", i.priority)),
    el("td", {}, badge("status", i.status)),
    timeCell(i.opened_at),
    el("td", {}, follow));
}

async function loadSupport({ append = false, refresh = false, told = false, again = false } = {}) {
  const params = filtersFor("support", supportParams, refresh || append || again);
  // a refresh, or coming back to the queue, reloads what is on screen (up to 200 rows),
  // in one request: "Show more" must not be undone by the next refresh
  const shown = $("interaction-table").tBodies[0].rows.length;
  const limit = refresh || again ? Math.min(Math.max(shown, PAGE), 200) : PAGE;
  const page = await newest("support", refresh, `/api/v1/interactions${query({ ...params, limit,
    sort: params.q ? null : (params.overdue ? null : "oldest"),
    cursor: append ? state.supportCursor : null })}`);
  if (!page) return;
  const body = $("interaction-table").tBodies[0];
  const rows = page.items.map(interactionRow);
  if (append) appendRows(body, rows);
  else refreshRows(body, rows);
  watchClamps(body);
  state.supportCursor = page.next_cursor;
  $("interaction-more").hidden = !page.next_cursor;
  $("interaction-empty").hidden = body.rows.length > 0;
  $("interaction-table").parentElement.hidden = body.rows.length === 0;
  state.supportStamp = new Date();
  stampUpdated();
  loaded();
  if (told || append) {
    tellShown(body.rows.length, page.next_cursor, ["interaction", "interactions"],
      $("interaction-empty").textContent);
  }
  if (append) focusBrought($("interaction-more"), rows[0]);
}

// --- routing and refresh ----------------------------------------------------------------
async function route() {
  // back from an organization: where it was opened from
  const from = state.view === "org" ? state.openedFrom : null;
  if (state.view === "org") state.openedFrom = null;
  refreshEvery(null);
  state.loadedAt = null;
  say("");
  if (!token()) {
    signOut();
    return;
  }
  try {
    if (!state.me) await signIn();
    const hash = location.hash || "#/";
    const org = hash.match(/^#\/org\/(.*)$/);
    if (org && !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(org[1])) {
      throw new ApiError(404, null);
    }
    if (org) {
      state.orgId = org[1];
      showView("org");
      // another organization's figures must not stand under this one's title
      $("org-body").hidden = true;
      $("org-title").textContent = "Loading…";
      $("org-title").removeAttribute("data-expanded");
      $("org-subtitle").textContent = "";
      $("org-updated").textContent = "";
      state.orgStamp = null;
      state.timelineCursor = null;
      $("org-timeline").replaceChildren();
      await loadOrganization(org[1]);
      refreshEvery(() => loadOrganization(org[1], { refresh: true }).catch(fail));
    } else if (hash === "#/support") {
      state.orgId = null;
      showView("support");
      await loadSupport({ again: true });
      refreshEvery(() => loadSupport({ refresh: true }).catch(fail));
    } else if (hash === "#/" && state.me && state.me.role === "support" && !state.visitedList) {
      // support staff start in their queue; the list stays one click away
      state.visitedList = true;
      location.hash = "#/support";
    } else {
      state.visitedList = true;
      state.orgId = null;
      showView("list");
      await loadList({ again: true });
      loadTrust().catch(fail);
      refreshEvery(() => loadList({ refresh: true }).catch(fail));
    }
    focusReturning(from);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      state.orgId = null;
      showView("org");
      $("org-body").hidden = true;
      $("org-title").textContent = "Organization not found";
      titled("Organization not found");
      $("org-updated").textContent = "";
      state.orgStamp = null;
      $("org-subtitle").textContent = "No organization with this address is visible to you: " +
        "the link may be mistyped, or your role does not cover it. Go back to the list to find it.";
      focusHeading();
      return;
    }
    fail(error);
  }
}

function start() {
  takeTokenFromFragment();
  $("auto-update-seconds").textContent = String(REFRESH_SECONDS);
  $("auto-update").addEventListener("change", () => {
    schedule();
    if (state.timer) state.refresh();  // turned on: at once, not a period later
    stampUpdated();
  });
  watchScrollingFrames();
  document.addEventListener("visibilitychange", shownAgain);
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    forget();
    sessionStorage.setItem(TOKEN_KEY, $("signin-token").value.trim());
    state.me = null;
    state.visitedList = false;
    $("signin-token").value = "";
    const back = state.returnTo || "#/";
    state.returnTo = null;
    if (location.hash === back) route();
    else location.hash = back;
  });
  $("sign-out").addEventListener("click", () => signOut());
  document.addEventListener("click", openedFrom);
  // the routes live in the fragment: "#main" would be a navigation (to the list), so
  // the skip link moves the focus itself
  document.querySelector(".skip").addEventListener("click", (event) => {
    event.preventDefault();
    focusHeading();
  });
  // what a filter's field takes, said in words (the browser's own "Please match the
  // requested format" names no format)
  for (const [id, format] of [
    ["f-factor", "Letters, digits, spaces and underscores only, e.g. few logins."],
  ]) {
    $(id).addEventListener("input", () => {
      $(id).setCustomValidity("");
      if ($(id).validity.patternMismatch) $(id).setCustomValidity(format);
    });
  }
  $("list-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadList({ told: true }).catch(failedFilter("org-table"));
  });
  $("list-filters").addEventListener("reset", () => {
    $("f-factor").setCustomValidity("");
    setTimeout(() => loadList({ told: true }).catch(failedFilter("org-table")));
  });
  for (const id of ["f-band", "f-risk", "f-sort"]) {
    $(id).addEventListener("change", () => loadList({ told: true }).catch(failedFilter("org-table")));
  }
  $("org-more").addEventListener("click", () => loadList({ append: true }).catch(fail));
  $("support-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadSupport({ told: true }).catch(failedFilter("interaction-table"));
  });
  for (const id of ["s-status", "s-mine", "s-overdue"]) {
    $(id).addEventListener("change",
      () => loadSupport({ told: true }).catch(failedFilter("interaction-table")));
  }
  $("interaction-more").addEventListener("click", () => loadSupport({ append: true }).catch(fail));
  $("timeline-more").addEventListener("click", () => {
    if (state.orgId) loadMoreInteractions(state.orgId).catch(fail);
  });
  $("org-alert").addEventListener("click", (event) => {
    const link = event.target instanceof Element ? event.target.closest("a[data-interaction]") : null;
    if (!link) return;
    event.preventDefault();
    showInteraction(link.dataset.interaction).catch(fail);
  });
  $("history-days").addEventListener("change", () => {
    if (!state.orgId) return;
    loadOrganization(state.orgId, { refresh: true }).catch((error) => {
      // the chart still shows the period before: the choice says so again
      if (state.historyDays) $("history-days").value = state.historyDays;
      fail(error);
    });
  });
  window.addEventListener("hashchange", () => {
    takeTokenFromFragment();
    route();
  });
  route();
}

document.addEventListener("DOMContentLoaded", start);
