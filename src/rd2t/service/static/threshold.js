// Threshold: score histograms as inline SVG, a slider with the rates it would give, Apply with history.
"use strict";

const data = JSON.parse(document.getElementById("analysis").textContent);
const slider = document.getElementById("slider");
const valueBox = document.getElementById("value");
const SERIES = [
  { key: "validation_good", label: "Good validation images", colour: "var(--valgood)" },
  { key: "reviewed_good", label: "Reviewed good here (false alarms, confirmed good)", colour: "var(--revgood)" },
  { key: "reviewed_defect", label: "Confirmed defects here", colour: "var(--revdefect)" },
  // the defects given at training (--val-defects), drawn only for a model that has them
  { key: "labelled_defect", label: "Labelled defects given at training", colour: "var(--labelled)" },
].filter((s) => s.key !== "labelled_defect" || (data.labelled_defect || []).length);
let current = data.current;

// The score range shown: every score and the threshold, with a margin on both sides.
const all = [current, ...SERIES.flatMap((s) => data[s.key])];
// A loop, not Math.min(...all): spreading more than ~100k reviewed scores overflows the call stack.
let lo = all.reduce((a, b) => Math.min(a, b)), hi = all.reduce((a, b) => Math.max(a, b));
const pad = (hi - lo) * 0.1 || Math.abs(hi) * 0.5 || 1;
lo = Math.max(0, lo - pad);
hi += pad;
const step = (hi - lo) / 1000;
Object.assign(slider, { min: lo, max: hi, step, value: current });
valueBox.step = "any";

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

const W = 960, LEFT = 12, RIGHT = 12, ROW = 78, AXIS = 28, BINS = 40;
const x = (v) => LEFT + ((v - lo) / (hi - lo)) * (W - LEFT - RIGHT);

function draw(trial) {
  const height = SERIES.length * ROW + AXIS;
  const root = svg("svg", { viewBox: `0 0 ${W} ${height}`, class: "hist", role: "img" });
  // Everything right of the tried value would be marked defective.
  root.append(svg("rect", { x: x(trial), y: 0, width: Math.max(0, W - RIGHT - x(trial)),
    height: SERIES.length * ROW, fill: "#fee2e2", opacity: 0.55 }));
  SERIES.forEach((s, row) => {
    const scores = data[s.key];
    const top = row * ROW, base = top + ROW - 8;
    root.append(svg("line", { x1: LEFT, x2: W - RIGHT, y1: base, y2: base, stroke: "#cbd5e1" }));
    root.append(svg("text", { x: LEFT + 2, y: top + 14, fill: "#374151" },
      `${s.label}: ${scores.length ? fmtCount(scores.length) : "none yet"}`));
    const counts = new Array(BINS).fill(0);
    for (const v of scores) counts[Math.min(BINS - 1, Math.max(0, Math.floor(((v - lo) / (hi - lo)) * BINS)))]++;
    const most = Math.max(1, ...counts), barW = (W - LEFT - RIGHT) / BINS;
    counts.forEach((c, i) => {
      if (!c) return;
      const h = (c / most) * (ROW - 30);
      const bar = svg("rect", { x: LEFT + i * barW + 1, y: base - h, width: barW - 2, height: h, fill: s.colour });
      bar.append(svg("title", {}, `${c} image${c > 1 ? "s" : ""}`));
      root.append(bar);
    });
  });
  // Axis with five ticks.
  const axisY = SERIES.length * ROW;
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    root.append(svg("line", { x1: x(v), x2: x(v), y1: axisY - 8, y2: axisY - 3, stroke: "#6b7280" }));
    root.append(svg("text", { x: x(v), y: axisY + 12, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle",
      fill: "#6b7280" }, fmtScore(v)));
  }
  root.append(svg("text", { x: W / 2, y: axisY + 26, "text-anchor": "middle", fill: "#6b7280" }, "score"));
  root.append(svg("line", { x1: x(current), x2: x(current), y1: 0, y2: axisY - 4, stroke: "#111827",
    "stroke-width": 2, "stroke-dasharray": "5 4" }));
  root.append(svg("line", { x1: x(trial), x2: x(trial), y1: 0, y2: axisY - 4, stroke: "#1d4ed8", "stroke-width": 3 }));
  root.addEventListener("click", (event) => { // click on the chart: try that value
    const box = root.getBoundingClientRect();
    const v = lo + (((event.clientX - box.left) / box.width) * W - LEFT) / (W - LEFT - RIGHT) * (hi - lo);
    setTrial(Math.min(hi, Math.max(lo, v)));
  });
  document.getElementById("hist").replaceChildren(root);
}

// "k of n (p %)"; for 0 of n the honest bound (rule of three: up to about 3/n at 95 %).
function rate(element, sub, k, n, what, none) {
  if (!n) {
    element.textContent = "—";
    sub.textContent = none;
    return;
  }
  element.textContent = `${fmtCount(k)} of ${fmtCount(n)} (${fmtPercent(k, n)})`;
  // Rule of three: seeing 0 of n still allows a true rate of up to about 3 in n (95 % confidence).
  sub.textContent = k === 0 && n < 300
    ? `${what}; from ${n} image${n > 1 ? "s" : ""} the true rate could still be up to ${Math.round((100 * Math.min(3, n)) / n)} %`
    : what;
}

function setTrial(t, typed) {
  if (!typed) {
    t = Number(fmtScore(t)); // the value shown is the value applied
    valueBox.value = fmtScore(t);
  }
  slider.value = t;
  const id = (name) => document.getElementById(name);
  const val = data.validation_good, good = data.reviewed_good, bad = data.reviewed_defect;
  rate(id("rate-val"), id("rate-val-sub"), val.filter((v) => v > t).length, val.length,
    "good validation images would be flagged", "no validation scores in this model");
  rate(id("rate-revgood"), id("rate-revgood-sub"), good.filter((v) => v > t).length, good.length,
    "parts reviewed good here would be flagged", "no parts reviewed good yet");
  rate(id("rate-miss"), id("rate-miss-sub"), bad.filter((v) => v <= t).length, bad.length,
    "confirmed defects would pass", "no confirmed defects yet");
  const labelled = data.labelled_defect || [];
  if (id("rate-labelled")) {
    rate(id("rate-labelled"), id("rate-labelled-sub"), labelled.filter((v) => v <= t).length, labelled.length,
      "labelled defects given at training would pass", "");
  }
  id("apply-value").textContent = typed ? valueBox.value : fmtScore(t);
  draw(t);
}

slider.addEventListener("input", () => setTrial(Number(slider.value)));
document.getElementById("try-suggested")?.addEventListener("click", () => setTrial(data.suggested));
valueBox.addEventListener("input", () => {
  const v = Number(valueBox.value);
  if (valueBox.value.trim() && isFinite(v)) setTrial(v, true);
});

// Reviews made under an earlier model: scored again by this one in the background (live inspections first),
// then the page reloads with them on this model's scale (also after Stop: what was scored counts). A failure
// is shown beside the button, which can be pressed again.
const rescoreButton = document.getElementById("rescore");
if (rescoreButton) {
  const progress = document.getElementById("rescore-progress");
  const stopButton = document.getElementById("rescore-stop");
  stopButton.addEventListener("click", async () => {
    stopButton.disabled = true;
    try {
      await api("/v1/threshold/rescore/stop", {});
    } catch (e) {
      progress.textContent = `could not stop: ${e.message}`;
      stopButton.disabled = false;
    }
  });
  rescoreButton.addEventListener("click", async () => {
    rescoreButton.disabled = true;
    progress.textContent = "starting…";
    try {
      let p = await api("/v1/threshold/rescore", {});
      stopButton.hidden = false;
      while (p.running) {
        progress.textContent = p.total ? `${fmtCount(p.scored + p.unreadable)} of ${fmtCount(p.total)}…` : "starting…";
        await new Promise((resolve) => setTimeout(resolve, 500));
        p = await api("/v1/threshold/rescore");
      }
      if (p.error) throw new Error(p.error);
      progress.textContent = p.stopped ? "stopped" : "done";
      location.reload(); // the page counts any whose stored image could not be read, and any left
    } catch (e) {
      const why = e instanceof TypeError ? "the station could not be reached" : e.message; // fetch's own
      progress.textContent = `rescoring failed: ${why}`;
      progress.className = "notice error";
      stopButton.hidden = true;
      rescoreButton.disabled = false;
    }
  });
}

// Each change belongs to the scores it was made on; other models' rows are greyed (the same as threshold.html).
function showHistory(history) {
  const table = document.createElement("table");
  table.className = "list";
  table.id = "history";
  const head = table.createTHead().insertRow();
  for (const h of ["When", "Who", "From", "To", "Model", "Note"]) head.append(Object.assign(document.createElement("th"), { textContent: h }));
  const body = table.createTBody();
  for (const h of history) {
    const row = body.insertRow();
    if (!h.this_model) row.className = "other-model";
    const time = document.createElement("time");
    time.setAttribute("datetime", h.at);
    row.insertCell().append(time);
    const model = (h.model_id || "unknown") + (h.this_model ? " (these scores)" : "");
    for (const text of [h.by || "—", fmtScore(h.previous), fmtScore(h.value), model, h.note || ""]) row.insertCell().textContent = text;
    row.cells[2].className = row.cells[3].className = "num";
  }
  localTimes(table);
  document.getElementById("history").replaceWith(table);
}

document.getElementById("apply-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const value = Number(valueBox.value);
  const message = document.getElementById("apply-message");
  if (!valueBox.value.trim() || !isFinite(value)) {
    showMessage(message, "Type a number first.", "error");
    return;
  }
  if (!confirm(`Apply threshold ${fmtScore(value)} (now ${fmtScore(current)}) to the running station?`)) return;
  try {
    const t = await api("/v1/threshold", { value, by: document.getElementById("apply-by").value.trim() || null,
      note: document.getElementById("apply-note").value.trim() || null });
    current = t.value;
    for (const name of ["threshold-now", "current-threshold"]) {
      const e = document.getElementById(name);
      if (e) e.textContent = fmtScore(t.value);
    }
    showHistory(t.history);
    document.getElementById("other-model-note")?.remove(); // this model's own change is in force now
    showMessage(message, `Applied: the next inspection uses ${fmtScore(t.value)}.`, "ok");
    setTrial(current);
  } catch (e) {
    showMessage(message, `Not applied (${e.message}).`, "error");
  }
});

setTrial(current);
