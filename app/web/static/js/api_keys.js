// API keys, for programs: create (the key is shown once), list, revoke. Offered where the
// server has the route; the page itself never uses a key.

import * as api from "./api.js";
import { time } from "./format.js";
import { state, subscribe, update } from "./state.js";

export function mountApiKeys() {
  const form = document.getElementById("key-form");
  const created = document.getElementById("key-created");
  const table = document.getElementById("api-keys");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = form.elements.name.value.trim();
    if (!name) return (created.textContent = "Give the key a name.");
    const scopes = form.elements.trade.checked ? ["read", "trade"] : ["read"];
    try {
      const { body } = await api.createApiKey({ name, scopes });
      created.textContent = `Key "${body.name}" (shown once, copy it now): ${body.key}`;
      form.reset();
      refreshApiKeys();
    } catch (error) {
      created.textContent = error.message;
    }
  });
  table.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-id]");
    if (!button) return;
    try {
      await api.revokeApiKey(button.dataset.id);
      created.textContent = "Key revoked: it stopped working at once.";
    } catch (error) {
      created.textContent = error.message;
    }
    refreshApiKeys();
  });
  subscribe(["apiKeys", "config"], render);
}

export async function refreshApiKeys() {
  if (!state.config.features.api_keys) return;
  try {
    update({ apiKeys: (await api.listApiKeys()).body });
  } catch {
    // the tab shows the list as it was
  }
}

function render() {
  const available = Boolean(state.config.features.api_keys);
  const form = document.getElementById("key-form");
  const table = document.getElementById("api-keys");
  form.hidden = table.hidden = !available;
  if (!available) {
    document.getElementById("key-created").textContent = "API keys are not available on this server.";
    return;
  }
  const body = table.tBodies[0];
  body.replaceChildren(
    ...state.apiKeys.map((key) => {
      const row = document.createElement("tr");
      for (const text of [key.name, `${key.prefix}…`, key.scopes.join(", "), time(key.created_at), time(key.expires_at), time(key.last_used_at)]) {
        const td = document.createElement("td");
        td.textContent = text;
        row.append(td);
      }
      const td = document.createElement("td");
      const revoke = document.createElement("button");
      revoke.type = "button";
      revoke.dataset.id = key.id;
      revoke.textContent = "Revoke";
      td.append(revoke);
      row.append(td);
      return row;
    }),
  );
}
