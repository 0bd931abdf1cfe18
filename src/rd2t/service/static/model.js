// The Model page: load the file at --model again (a retrained model copied or linked into its place).
"use strict";

const reloadButton = document.getElementById("reload-model");
const reloadMessage = document.getElementById("reload-message");

reloadButton.addEventListener("click", async () => {
  reloadButton.disabled = true;
  showMessage(reloadMessage, "Loading the file…", "warn");
  try {
    const r = await api("/v1/model/reload", {});
    if (r.changed) {
      showMessage(reloadMessage, `Model ${r.model.id} (${r.model.name}) scores every new part; it replaced ${r.previous}.`, "ok");
      setTimeout(() => location.reload(), 1500); // the page then describes the new model
    } else {
      showMessage(reloadMessage, `The file is the model in use (${r.previous}): nothing to reload.`, "ok");
    }
  } catch (e) {
    showMessage(reloadMessage, `Not reloaded: ${e.message}`, "error");
  }
  reloadButton.disabled = false;
});
