// The one place the dashboard's state lives. Modules change it with update(); views
// subscribe to the keys they show and render from it. A change is rendered at the next
// animation frame, once, however many ticks changed it in between.

export const state = {
  config: { demo_login: null, features: {} },
  session: null, // {token, email, expiresAt}
  user: null,
  view: "loading", // loading | login | onboarding | terminal
  watchlist: [],
  quotes: new Map(), // instrument -> {bid, ask, ts, digits, direction, rev}
  selected: null,
  timeframe: "M1",
  positions: [],
  pendingOrders: [],
  orders: [],
  deals: [],
  apiKeys: [],
  account: null,
  agent: { status: "unknown", terminalConnected: null, detail: "" },
  streams: { prices: "idle", account: "off" },
  priceStreamError: "",
  busy: false, // an order or a change is in flight
};

const listeners = new Map();
const dirty = new Set();
let frame = 0;

export function subscribe(keys, render) {
  for (const key of keys) {
    if (!listeners.has(key)) listeners.set(key, new Set());
    listeners.get(key).add(render);
  }
}

export function update(changes) {
  Object.assign(state, changes);
  for (const key of Object.keys(changes)) dirty.add(key);
  schedule();
}

// For state changed in place (the quotes map): marks the key for the next render.
export function touch(key) {
  dirty.add(key);
  schedule();
}

function schedule() {
  if (!frame) frame = requestAnimationFrame(flush);
}

function flush() {
  frame = 0;
  const keys = new Set(dirty);
  dirty.clear();
  const renders = new Set();
  for (const key of keys) for (const render of listeners.get(key) ?? []) renders.add(render);
  for (const render of renders) render(state, keys);
}

// A symbol's price precision, as its quotes show it (5 until one arrives).
export const digitsOf = (symbol) => state.quotes.get(symbol)?.digits ?? 5;
