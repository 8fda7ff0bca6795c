// The one /ws/prices socket for every instrument the page shows (the watchlist, the chart,
// the positions): it subscribes to what is wanted and keeps each instrument's last quote.

import { ReconnectingSocket, socketUrl } from "./socket.js";
import { state, touch, update } from "./state.js";

let socket = null;
let subscribed = new Set();
let wanted = new Set();

// Starts the socket unless it runs already (stopPrices() ends it).
export function startPrices(token, onRefused) {
  if (socket) return;
  socket = new ReconnectingSocket({
    url: () => socketUrl("/ws/prices", { token: token() }),
    refusedCodes: [4001],
    onRefused,
    onStatus: (status) => update({ streams: { ...state.streams, prices: status } }),
    onOpen: () => {
      subscribed = new Set();
      sync();
    },
    onMessage: (message) => {
      if (message.type === "tick") applyTick(message.data);
      // A subscription the server refused (too many instruments, a malformed name).
      else if (message.type === "error") update({ priceStreamError: message.message ?? message.detail });
    },
  });
  socket.start();
}

export function stopPrices() {
  socket?.stop();
  socket = null;
  subscribed = new Set();
}

// The instruments the page needs now; the socket follows (subscribe/unsubscribe diff).
export function wantPrices(instruments) {
  wanted = new Set(instruments);
  sync();
}

function sync() {
  if (!socket) return;
  const add = [...wanted].filter((name) => !subscribed.has(name));
  const remove = [...subscribed].filter((name) => !wanted.has(name));
  if (add.length && socket.send({ type: "subscribe", instruments: add })) add.forEach((n) => subscribed.add(n));
  if (remove.length && socket.send({ type: "unsubscribe", instruments: remove })) {
    remove.forEach((n) => subscribed.delete(n));
  }
}

function applyTick(tick) {
  if (!tick || typeof tick.instrument !== "string" || !(tick.bid > 0) || !(tick.ask > 0)) return;
  const previous = state.quotes.get(tick.instrument);
  const digits = Math.max(previous?.digits ?? 0, decimals(tick.bid), decimals(tick.ask));
  let direction = previous?.direction ?? null;
  if (previous && tick.bid !== previous.bid) direction = tick.bid > previous.bid ? "up" : "down";
  state.quotes.set(tick.instrument, {
    bid: tick.bid,
    ask: tick.ask,
    ts: tick.ts,
    digits,
    direction,
    rev: (previous?.rev ?? 0) + 1,
  });
  touch("quotes");
}

// Quotes carry no precision: the most decimals seen so far stands for the symbol's digits.
function decimals(price) {
  const text = String(price);
  if (text.includes("e")) return 8;
  const dot = text.indexOf(".");
  return dot === -1 ? 0 : Math.min(text.length - dot - 1, 8);
}
