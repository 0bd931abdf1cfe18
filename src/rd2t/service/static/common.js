// Shared by every page: JSON calls to the station API (same origin, the token cookie goes along),
// number formats matching the server's, and local times.
"use strict";

const REVIEW_LABELS = {
  unreviewed: "not reviewed", false_alarm: "false alarm", confirmed_defect: "confirmed defect",
  confirmed_good: "confirmed good", missed_defect: "missed defect",
};

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) { // the token changed or the cookie is gone: sign in again, come back
    window.location = `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
  }
  if (!response.ok) {
    let reason = response.statusText;
    try { reason = (await response.json()).detail || reason; } catch (e) { /* not JSON */ }
    throw new Error(`${response.status}: ${typeof reason === "string" ? reason : JSON.stringify(reason)}`);
  }
  return response.json();
}

// Four significant digits, like the server's `score` filter (Python "%.4g").
function fmtScore(x) {
  if (x === null || x === undefined || !isFinite(x)) return "—";
  const s = Number(x).toPrecision(4);
  return s.includes("e") ? s : String(Number(s));
}

// Counts grouped by thousands with a narrow space, SI style (the same as the `count` filter in page.py).
function fmtCount(n) {
  return n.toLocaleString("en").replaceAll(",", "\u202f");
}

function fmtPercent(part, whole) {
  if (!whole) return "—";
  return part ? `${((100 * part) / whole).toFixed(1)} %` : "0 %";
}

function showMessage(element, text, kind) {
  element.textContent = text;
  element.className = `notice ${kind}`;
}

// Show times in the browser's own time zone; the server writes UTC as a fallback.
function localTimes(root) {
  for (const t of (root || document).querySelectorAll("time[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (isNaN(d)) continue;
    t.textContent = t.dataset.format === "time" ? d.toLocaleTimeString() : d.toLocaleString();
    t.title = t.getAttribute("datetime");
  }
}

document.addEventListener("DOMContentLoaded", () => localTimes());
