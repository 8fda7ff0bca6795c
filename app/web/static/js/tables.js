// The tables: positions (live profit, Close and Modify), pending orders (Modify and
// Cancel), orders and deals. Rows are keyed and updated in place, so a focused button
// keeps its focus while prices move.

import * as api from "./api.js";
import { guarded, refreshAfterTrade } from "./account.js";
import { money, price, signClass, signedMoney, sideLabel, time, volume } from "./format.js";
import { digitsOf, state, subscribe } from "./state.js";

const JOB_FOLLOW_MS = 1000;
const JOB_FOLLOW_LIMIT = 60;
let message;
let dialog;
let editing = null; // {kind: "position"|"pending", item}

export function mountTables() {
  message = document.getElementById("toolbox-message");
  dialog = document.getElementById("edit-dialog");
  document.getElementById("edit-form").addEventListener("submit", onDialogSubmit);
  document.getElementById("positions").addEventListener("click", onPositionAction);
  document.getElementById("pending-orders").addEventListener("click", onPendingAction);
  subscribe(["positions"], renderPositions);
  subscribe(["pendingOrders", "config"], renderPendingOrders);
  subscribe(["orders"], renderOrders);
  subscribe(["deals", "config"], renderDeals);
}

function say(text, kind = "info") {
  message.textContent = text;
  message.dataset.kind = kind;
}

function cellsFor(table, items, keyOf, cellsOf, actions = []) {
  const body = table.tBodies[0];
  const existing = new Map([...body.rows].map((row) => [row.dataset.key, row]));
  const rows = items.map((item) => {
    const key = String(keyOf(item));
    let row = existing.get(key);
    existing.delete(key);
    const cells = cellsOf(item);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.key = key;
      for (let i = 0; i < cells.length; i += 1) row.append(document.createElement("td"));
      if (actions.length) {
        const td = document.createElement("td");
        td.className = "actions";
        for (const [action, label] of actions) {
          const button = document.createElement("button");
          button.type = "button";
          button.dataset.action = action;
          button.textContent = label;
          td.append(button);
        }
        row.append(td);
      }
    }
    cells.forEach(([text, className = ""], i) => {
      const td = row.cells[i];
      if (td.textContent !== text) td.textContent = text;
      if (td.className !== className) td.className = className;
    });
    return row;
  });
  for (const row of existing.values()) row.remove();
  rows.forEach((row, i) => {
    if (body.rows[i] !== row) body.insertBefore(row, body.rows[i] ?? null);
  });
  const empty = document.querySelector(`[data-empty-for="${table.id}"]`);
  if (empty) empty.hidden = items.length > 0;
}

function renderPositions() {
  cellsFor(
    document.getElementById("positions"),
    state.positions,
    (p) => p.position_id,
    (p) => {
      const digits = digitsOf(p.symbol);
      return [
        [p.symbol],
        [String(p.position_id), "num"],
        [sideLabel(p.side), p.side],
        [volume(p.volume), "num"],
        [price(p.open_price, digits), "num"],
        [price(p.current_price, digits), "num"],
        [p.sl ? price(p.sl, digits) : "–", "num"],
        [p.tp ? price(p.tp, digits) : "–", "num"],
        [money(p.swap), "num"],
        [signedMoney(p.profit), `num profit ${signClass(p.profit)}`],
      ];
    },
    [["close", "Close"], ["modify", "Modify"]],
  );
  document.getElementById("tab-positions").textContent = `Positions${state.positions.length ? ` (${state.positions.length})` : ""}`;
}

function renderPendingOrders() {
  const table = document.getElementById("pending-orders");
  if (!state.config.features.pending_orders) {
    document.querySelector('[data-empty-for="pending-orders"]').textContent = "Pending orders are not available on this server.";
  }
  cellsFor(
    table,
    state.pendingOrders,
    (o) => o.ticket,
    (o) => {
      const digits = digitsOf(o.symbol);
      return [
        [o.symbol],
        [String(o.ticket), "num"],
        [sideLabel(o.side, o.type), o.side],
        [volume(o.volume), "num"],
        [price(o.price, digits), "num"],
        [o.stop_limit_price ? price(o.stop_limit_price, digits) : "–", "num"],
        [o.sl ? price(o.sl, digits) : "–", "num"],
        [o.tp ? price(o.tp, digits) : "–", "num"],
        [describeExpiration(o.expiration)],
        [time(o.placed_at)],
      ];
    },
    [["modify", "Modify"], ["cancel", "Cancel"]],
  );
}

function describeExpiration(expiration) {
  if (!expiration || expiration.type === "gtc") return "GTC";
  if (expiration.type === "day") return "Today";
  return time(expiration.at);
}

const STATUS_TEXT = {
  pending: "pending",
  filled: "filled",
  placed: "placed",
  rejected: "rejected",
  expired: "expired",
  cancelled: "cancelled",
  unknown: "unknown: check positions",
};

function renderOrders() {
  cellsFor(
    document.getElementById("orders"),
    state.orders,
    (o) => o.order_id,
    (o) => {
      const digits = digitsOf(o.symbol);
      const shown = o.fill_price ?? o.price;
      return [
        [time(o.created_at)],
        [o.symbol],
        [sideLabel(o.side, o.type), o.side],
        [volume(o.volume), "num"],
        [shown ? price(shown, digits) : "market", "num"],
        [o.sl ? price(o.sl, digits) : "–", "num"],
        [o.tp ? price(o.tp, digits) : "–", "num"],
        [STATUS_TEXT[o.status] ?? o.status, `status ${o.status}`],
        [o.error?.message ?? (o.position_id ? `position ${o.position_id}` : o.ticket ? `ticket ${o.ticket}` : "")],
      ];
    },
  );
}

const REASONS = { mt5gate: "mt5gate", client: "desktop terminal", mobile: "mobile", web: "web", expert: "expert", sl: "stop loss", tp: "take profit", stop_out: "stop out" };

function renderDeals() {
  if (!state.config.features.history) {
    document.querySelector('[data-empty-for="deals"]').textContent = "Deals are not available on this server.";
  }
  cellsFor(
    document.getElementById("deals"),
    state.deals,
    (d) => d.ticket,
    (d) => [
      [time(d.time)],
      [String(d.ticket), "num"],
      [d.symbol ?? "–"],
      [d.side ? sideLabel(d.side) : d.type, d.side ?? ""],
      [d.entry ?? "–"],
      [volume(d.volume), "num"],
      [d.price ? price(d.price, digitsOf(d.symbol)) : "–", "num"],
      [signedMoney(d.profit), `num profit ${signClass(d.profit)}`],
      [REASONS[d.reason] ?? d.reason ?? "–"],
    ],
  );
}

function itemOf(event, items, key) {
  const button = event.target.closest("button[data-action]");
  if (!button) return [null, null];
  const id = button.closest("tr").dataset.key;
  return [button, items.find((item) => String(item[key]) === id)];
}

async function onPositionAction(event) {
  const [button, position] = itemOf(event, state.positions, "position_id");
  if (!position) return;
  if (button.dataset.action === "modify") return openDialog("position", position);
  button.disabled = true;
  say(`Closing position ${position.position_id}…`);
  await closePosition(position);
  button.disabled = false;
}

async function closePosition(position, part) {
  try {
    const { status, body } = await guarded(() => api.closePosition(position.position_id, part));
    if (status === 202) await followJob(body.job_id, `Closing position ${position.position_id}`);
    else say(`Closed ${volume(body.volume)} lots of position ${body.position_id} at ${price(body.closed_price, digitsOf(position.symbol))}: ${signedMoney(body.pnl)}.`, "ok");
    return true;
  } catch (error) {
    say(error.message, "error");
    return false;
  } finally {
    refreshAfterTrade();
  }
}

async function onPendingAction(event) {
  const [button, order] = itemOf(event, state.pendingOrders, "ticket");
  if (!order) return;
  if (button.dataset.action === "modify") return openDialog("pending", order);
  button.disabled = true;
  say(`Cancelling order ${order.ticket}…`);
  try {
    const { status, body } = await guarded(() => api.cancelPendingOrder(order.ticket));
    if (status === 202) await followJob(body.job_id, `Cancelling order ${order.ticket}`);
    else say(`Order ${body.ticket} cancelled.`, "ok");
  } catch (error) {
    say(error.message, "error");
  } finally {
    button.disabled = false;
    refreshAfterTrade();
  }
}

function openDialog(kind, item) {
  editing = { kind, item };
  const digits = digitsOf(item.symbol);
  const form = document.getElementById("edit-form");
  const id = kind === "position" ? item.position_id : item.ticket;
  document.getElementById("edit-title").textContent = `Modify ${kind === "position" ? "position" : "order"} ${id} · ${item.symbol}`;
  form.elements.price.value = kind === "pending" ? item.price : "";
  form.elements.sl.value = item.sl ?? "";
  form.elements.tp.value = item.tp ?? "";
  form.elements.close_volume.value = kind === "position" ? item.volume : "";
  for (const input of [form.elements.price, form.elements.sl, form.elements.tp]) input.step = 10 ** -digits;
  for (const element of form.querySelectorAll(".edit-price")) element.hidden = kind !== "pending";
  for (const element of form.querySelectorAll(".edit-close")) element.hidden = kind !== "position";
  document.getElementById("edit-message").textContent = "";
  dialog.showModal();
}

const optionalPrice = (input) => (input.value.trim() === "" ? null : Number(input.value));

async function onDialogSubmit(event) {
  const action = event.submitter?.value;
  if (action === "cancel" || !editing) return; // method=dialog closes it
  event.preventDefault();
  const form = event.target;
  const errorLine = document.getElementById("edit-message");
  const { kind, item } = editing;
  if (action === "close-part") {
    const part = Number(form.elements.close_volume.value);
    if (!(part > 0)) return (errorLine.textContent = "Enter the volume to close.");
    if (await closePosition(item, part < item.volume ? part : undefined)) dialog.close();
    else errorLine.textContent = message.textContent;
    return;
  }
  const changes = { sl: optionalPrice(form.elements.sl), tp: optionalPrice(form.elements.tp) };
  if (kind === "pending") {
    changes.price = optionalPrice(form.elements.price);
    if (!(changes.price > 0)) return (errorLine.textContent = "Enter the order's price.");
  }
  try {
    const call = kind === "position"
      ? () => api.modifyPosition(item.position_id, changes)
      : () => api.modifyPendingOrder(item.ticket, changes);
    const { status, body } = await guarded(call);
    dialog.close();
    if (status === 202) await followJob(body.job_id, `Changing ${kind === "position" ? "position" : "order"}`);
    else say(`${kind === "position" ? "Position" : "Order"} ${body.position_id ?? body.ticket} changed.`, "ok");
  } catch (error) {
    errorLine.textContent = error.message;
  } finally {
    refreshAfterTrade();
  }
}

// A change that answered 202: followed through GET /jobs/{id} where the server has it,
// else the next reads tell.
async function followJob(jobId, what) {
  say(`${what}: sent, waiting for the broker's answer…`);
  if (!state.config.features.jobs) return;
  for (let attempt = 0; attempt < JOB_FOLLOW_LIMIT; attempt += 1) {
    await new Promise((resolve) => setTimeout(resolve, JOB_FOLLOW_MS));
    try {
      const { body } = await api.getJob(jobId);
      if (body.status === "completed") return say(`${what}: done.`, "ok");
      if (["failed", "expired", "unknown"].includes(body.status)) {
        return say(`${what}: ${body.error?.message ?? body.status}.`, "error");
      }
    } catch (error) {
      return say(`${what}: ${error.message}`, "error");
    } finally {
      refreshAfterTrade();
    }
  }
}
