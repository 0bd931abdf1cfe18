// One inspection: heat-map toggle and opacity, review buttons, keyboard shortcuts.
"use strict";

const box = document.getElementById("inspection");
const overlay = document.getElementById("overlay");
const overlayOn = document.getElementById("overlay-on");
const opacity = document.getElementById("opacity");
const note = document.getElementById("note");
const by = document.getElementById("by");
const message = document.getElementById("review-message");
const buttons = [...document.querySelectorAll("button[data-state]")];

function showOverlay() {
  if (!overlay) return; // its images were removed by the retention policy
  overlay.style.opacity = overlayOn.checked ? opacity.value / 100 : 0;
  document.getElementById("opacity-value").textContent = `${opacity.value} %`;
}
overlayOn?.addEventListener("change", showOverlay);
opacity?.addEventListener("input", () => { overlayOn.checked = true; showOverlay(); });

by.value = localStorage.getItem("rd2t-reviewer") || "";
by.addEventListener("change", () => localStorage.setItem("rd2t-reviewer", by.value.trim()));

async function review(state) {
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const r = await api(`/v1/inspections/${box.dataset.id}/review`,
      { state, note: note.value.trim() || null, by: by.value.trim() || null });
    const badge = document.getElementById("review-state");
    badge.textContent = REVIEW_LABELS[r.review.state];
    badge.className = `review ${r.review.state}`;
    document.getElementById("review-by").textContent = r.review.by ? `by ${r.review.by}` : "";
    buttons.forEach((b) => b.classList.toggle("chosen", b.dataset.state === r.review.state));
    showMessage(message, `Saved: ${REVIEW_LABELS[r.review.state]}.`, "ok");
    const next = document.getElementById("next-unreviewed");
    if (next) next.focus();
  } catch (e) {
    showMessage(message, `Not saved (${e.message}).`, "error");
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}
buttons.forEach((b) => b.addEventListener("click", () => review(b.dataset.state)));

document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "TEXTAREA"].includes(document.activeElement.tagName)
    && document.activeElement.type !== "checkbox" && document.activeElement.type !== "range";
  if (typing && event.key === "Escape") { document.activeElement.blur(); return; } // back to the keys
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  const button = buttons.find((b) => b.dataset.key === key);
  if (button) { event.preventDefault(); button.click(); }
  else if (key === "h" && overlayOn) { overlayOn.checked = !overlayOn.checked; showOverlay(); }
  else if (key === "n" && document.getElementById("next-unreviewed")) {
    window.location = document.getElementById("next-unreviewed").href;
  }
});
showOverlay();
