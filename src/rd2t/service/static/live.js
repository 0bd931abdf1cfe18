// Live view: poll the API for inspections newer than the newest shown and put them first.
"use strict";

const grid = document.getElementById("grid");
const status = document.getElementById("live-status");
const POLL_MS = 1500;
let lastId = Number(grid.dataset.lastId) || 0;
let polls = 0;
const limit = Number(grid.dataset.limit) || 60;

function element(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text; // textContent: part ids and notes are never HTML
  return e;
}

// The same card as templates/_card.html.
function card(r) {
  const a = element("a", `card ${r.decision} new`);
  const scope = document.getElementById("today").dataset.scope; // the page's line/station, if any
  a.href = `/inspections/${r.id}${scope ? `?${scope}` : ""}`;
  a.dataset.id = r.id;
  const img = element("img");
  Object.assign(img, { src: r.links.thumb, alt: `inspection ${r.id}`, width: 170, height: 170 });
  const meta = element("div", "meta");
  const row1 = element("div", "row");
  row1.append(element("span", `verdict ${r.decision}`, r.decision === "defect" ? "DEFECT" : "PASS"));
  const score = element("span", "num", fmtScore(r.score));
  score.title = `score (threshold ${fmtScore(r.threshold)})`;
  row1.append(score);
  const row2 = element("div", "row");
  row2.append(element("span", "part", r.part_id || `#${r.id}`));
  const time = element("time", "muted small");
  time.setAttribute("datetime", r.time);
  time.dataset.format = "time";
  row2.append(time);
  const row3 = element("div", "row");
  row3.append(element("span", `review ${r.review.state}`, REVIEW_LABELS[r.review.state] || r.review.state));
  meta.append(row1, row2, row3);
  a.append(img, meta);
  localTimes(a);
  return a;
}

function setStatus(ok) {
  status.classList.toggle("lost", !ok);
  status.querySelector(".text").textContent = ok
    ? `Live · updated ${new Date().toLocaleTimeString()}`
    : "Connection lost, retrying…";
}

async function refreshCounts() {
  for (const span of document.querySelectorAll("[data-count]")) {
    const query = span.parentElement.dataset.query; // the filter's /v1/inspections query
    const page = await api(`/v1/inspections?${query}${query ? "&" : ""}limit=1`);
    span.textContent = fmtCount(page.total);
  }
}

// Today on this browser's clock (the plant's local day): /v1/stats for one day bucket since local midnight.
async function refreshToday() {
  const now = new Date();
  const midnight = new Date(now.getFullYear(), now.getMonth(), now.getDate());
  const scope = document.getElementById("today").dataset.scope; // line=…&station=… of the page, if any
  const query = `bucket=day&offset_minutes=${-now.getTimezoneOffset()}&since=${encodeURIComponent(midnight.toISOString())}`
    + (scope ? `&${scope}` : "");
  const t = (await api(`/v1/stats?${query}`)).total;
  const reviewed = [
    [t.false_alarm, "false alarm"], [t.confirmed_defect, "confirmed defect"], [t.missed_defect, "missed defect"],
  ].filter(([n]) => n).map(([n, label]) => `${fmtCount(n)} ${label}${n === 1 ? "" : "s"}`);
  document.getElementById("today").textContent = `Today: ${fmtCount(t.inspected)} inspected · `
    + `${fmtCount(t.defect)} defective (${fmtPercent(t.defect, t.inspected)})`
    + (reviewed.length ? ` · reviewed: ${reviewed.join(", ")}` : "");
}

// The broker's state (/readyz; null without --mqtt): a warning while the line controller is not told.
async function refreshHealth() {
  const health = await (await fetch("/readyz", { credentials: "same-origin" })).json();
  document.getElementById("mqtt-down").hidden = health.mqtt !== false;
}

// The score level of the last parts against the model's held-out good images (/v1/drift, this page's
// line/station): a warning while it has moved, since the threshold then means something else.
async function refreshDrift() {
  const scope = document.getElementById("today").dataset.scope;
  const d = await api(`/v1/drift${scope ? `?${scope}` : ""}`);
  const box = document.getElementById("drift-warning");
  box.hidden = d.state !== "higher" && d.state !== "lower";
  if (box.hidden) return;
  const pct = Math.round(d.percentile);
  const where = pct >= 100 ? "above all of them" : pct <= 0 ? "below all of them"
    : d.state === "higher" ? `above ${pct} % of them` : `above only ${pct} % of them`;
  box.querySelector(".text").textContent = d.state === "higher"
    ? `Parts score higher than the good images this model was calibrated on: the median of the last `
      + `${d.parts} lies ${where}. Lighting, the camera or the product may have changed, and false alarms `
      + `follow. Look at a few recent parts; if the change is there to stay, retrain with them.`
    : `Parts score lower than the good images this model was calibrated on: the median of the last `
      + `${d.parts} lies ${where}. A dark, blurred or empty image can score low, and defects then pass: `
      + `check that the camera sees the part.`;
}

async function poll() {
  try {
    const query = grid.dataset.query;
    const page = await api(`/v1/inspections?${query}${query ? "&" : ""}after_id=${lastId}&limit=100`);
    for (const r of page.items) { // oldest first: each new one goes on top
      grid.prepend(card(r));
      lastId = Math.max(lastId, r.id);
    }
    if (page.items.length) {
      document.getElementById("empty").hidden = true;
      while (grid.children.length > limit) grid.lastElementChild.remove();
    }
    // Reviews made elsewhere change the counts too: refresh them now and then.
    if (page.items.length || ++polls % 10 === 0) {
      await Promise.all([refreshCounts(), refreshToday(), refreshHealth(), refreshDrift()]);
    }
    setStatus(true);
  } catch (e) {
    setStatus(false);
  }
  setTimeout(poll, POLL_MS);
}

refreshToday().catch(() => setStatus(false));
refreshHealth().catch(() => setStatus(false));
refreshDrift().catch(() => setStatus(false));
setTimeout(poll, POLL_MS);
