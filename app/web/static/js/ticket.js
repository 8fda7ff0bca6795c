// The order ticket: market, limit, stop and stop-limit orders with volume, price,
// expiration, stop loss and take profit. The broker's answer is shown in words; an order
// that comes back pending (202) is followed until it ends. Disabled, with the reason,
// while the agent cannot take orders.

import * as api from "./api.js";
import { guarded, refreshAfterTrade } from "./account.js";
import { price, volume as formatVolume } from "./format.js";
import { digitsOf, state, subscribe, update } from "./state.js";

const FOLLOW_INTERVAL_MS = 1000;
const FOLLOW_LIMIT_MS = 120000;
const SYMBOL = /^[A-Za-z0-9._#-]{1,32}$/;
let form;
let fields = {};

export function mountTicket() {
  form = document.getElementById("ticket");
  const byId = (id) => document.getElementById(id);
  fields = {
    fieldset: byId("ticket-fields"),
    symbol: byId("ticket-symbol"),
    type: byId("ticket-type"),
    volume: byId("ticket-volume"),
    price: byId("ticket-price"),
    stopLimit: byId("ticket-stop-limit"),
    expiration: byId("ticket-expiration"),
    expiresAt: byId("ticket-expires-at"),
    sl: byId("ticket-sl"),
    tp: byId("ticket-tp"),
    sell: byId("ticket-sell"),
    buy: byId("ticket-buy"),
    disabled: byId("ticket-disabled"),
    result: byId("ticket-result"),
  };
  form.addEventListener("submit", (event) => event.preventDefault()); // Enter never trades
  fields.type.addEventListener("change", showTypeFields);
  fields.expiration.addEventListener("change", showTypeFields);
  fields.symbol.addEventListener("change", () => {
    const name = fields.symbol.value.trim().toUpperCase();
    if (SYMBOL.test(name)) update({ selected: name });
  });
  for (const button of [fields.sell, fields.buy]) {
    button.addEventListener("click", () => submit(button.dataset.side));
  }
  subscribe(["selected"], () => {
    if (state.selected && document.activeElement !== fields.symbol) fields.symbol.value = state.selected;
    renderQuote();
  });
  subscribe(["quotes"], renderQuote);
  subscribe(["agent", "busy", "config"], renderAvailability);
  showTypeFields();
}

function showTypeFields() {
  const type = fields.type.value;
  for (const element of form.querySelectorAll(".pending-only")) element.hidden = type === "market";
  for (const element of form.querySelectorAll(".stop-limit-only")) element.hidden = type !== "stop_limit";
  for (const element of form.querySelectorAll(".expiry-only")) {
    element.hidden = type === "market" || fields.expiration.value !== "specified";
  }
}

function renderQuote() {
  const quote = state.quotes.get(fields.symbol.value.trim().toUpperCase() || state.selected);
  fields.sell.querySelector(".tile-price").textContent = quote ? price(quote.bid, quote.digits) : "–";
  fields.buy.querySelector(".tile-price").textContent = quote ? price(quote.ask, quote.digits) : "–";
}

const AGENT_REASONS = {
  offline: "Orders are disabled: the agent is offline.",
  unresponsive: "Orders are disabled: the agent does not answer.",
  none: "Orders are disabled: no agent is provisioned for your broker connection.",
  terminal: "Orders are disabled: the agent's terminal lost its connection to the broker.",
};

function renderAvailability() {
  const pendingTypes = Boolean(state.config.features.pending_orders);
  for (const option of fields.type.options) {
    if (option.value === "market") continue;
    option.disabled = !pendingTypes;
    option.textContent = option.textContent.replace(/ \(not available on this server\)$/, "");
    if (!pendingTypes) option.textContent += " (not available on this server)";
  }
  const reasonKey = state.agent.status === "online" && state.agent.terminalConnected === false ? "terminal" : state.agent.status;
  const reason = AGENT_REASONS[reasonKey] ?? "";
  fields.fieldset.disabled = Boolean(reason);
  fields.disabled.textContent = reason && `${reason} ${state.agent.detail ?? ""}`.trim();
  fields.sell.disabled = fields.buy.disabled = state.busy;
}

function number(input) {
  const text = input.value.trim();
  return text === "" ? undefined : Number(text);
}

function buildOrder(side) {
  const type = fields.type.value;
  const order = {
    symbol: fields.symbol.value.trim().toUpperCase(),
    side,
    volume: number(fields.volume),
    sl: number(fields.sl),
    tp: number(fields.tp),
    client_order_id: crypto.randomUUID(),
  };
  if (type !== "market") {
    order.type = type; // left out for market orders, which servers before pending orders refuse
    order.price = number(fields.price);
    if (type === "stop_limit") order.stop_limit_price = number(fields.stopLimit);
    const expiration = fields.expiration.value;
    order.expiration =
      expiration === "specified"
        ? { type: "specified", at: fields.expiresAt.value ? `${fields.expiresAt.value}:00Z` : "" }
        : { type: expiration };
  }
  return order;
}

function check(order) {
  if (!SYMBOL.test(order.symbol)) return "Enter a symbol, such as EURUSD.";
  if (!(order.volume > 0)) return "Enter a volume in lots, such as 0.10.";
  if (order.type && !(order.price > 0)) return "Enter the order's price.";
  if (order.type === "stop_limit" && !(order.stop_limit_price > 0)) return "Enter the limit price after trigger.";
  return null;
}

function show(text, kind = "info") {
  fields.result.textContent = text;
  fields.result.dataset.kind = kind;
}

async function submit(side) {
  const order = buildOrder(side);
  const problem = check(order);
  if (problem) return show(problem, "error");
  update({ busy: true });
  show(`Sending ${describe(order)}…`);
  try {
    const { status, body } = await guarded(() => api.placeOrder(order));
    if (status === 202) {
      show(`${capitalize(describe(order))}: sent, waiting for the broker's answer…`);
      follow(body.order_id, order);
    } else {
      showOutcome(body, order);
    }
  } catch (error) {
    show(error.message, "error");
  } finally {
    update({ busy: false });
    refreshAfterTrade();
  }
}

function describe(order) {
  const kind = order.type ? ` ${order.type.replace("_", " ")}` : "";
  return `${order.side}${kind} ${formatVolume(order.volume)} ${order.symbol}`;
}

const capitalize = (text) => text.charAt(0).toUpperCase() + text.slice(1);

function showOutcome(outcome, order) {
  const digits = digitsOf(outcome.symbol ?? order.symbol);
  switch (outcome.status) {
    case "filled":
      return show(
        `${outcome.side === "buy" ? "Bought" : "Sold"} ${formatVolume(outcome.volume)} ${outcome.symbol} at ` +
          `${price(outcome.fill_price, digits)} (position ${outcome.position_id ?? outcome.ticket}).`,
        "ok",
      );
    case "placed":
      return show(`${capitalize(describe(order))} at ${price(outcome.price, digits)} placed (ticket ${outcome.ticket}).`, "ok");
    case "rejected":
      return show(`The broker rejected the order: ${outcome.error?.message ?? outcome.error?.code}`, "error");
    case "expired":
      return show("The order expired before the agent took it: it was never sent to the broker.", "error");
    case "unknown":
      return show("The agent took the order but never answered: check your positions before placing it again.", "error");
    default:
      return show(`Order ${outcome.status}.`);
  }
}

async function follow(orderId, order) {
  const until = Date.now() + FOLLOW_LIMIT_MS;
  while (Date.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, FOLLOW_INTERVAL_MS));
    try {
      const { body } = await api.getOrder(orderId);
      if (body.status !== "pending") {
        showOutcome(body, order);
        refreshAfterTrade();
        return;
      }
    } catch (error) {
      if (error.status === 401) return;
    }
  }
  show("No answer yet: the order may still execute. The Orders tab shows what became of it.", "error");
}
