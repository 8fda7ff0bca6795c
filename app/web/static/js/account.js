// What the account holds: positions, pending orders, orders, deals, balances and the
// agent's state. From the account events stream where the server has one; else read over
// REST, positions and balances every second, the rest less often.

import * as api from "./api.js";
import { startAccountStream, stopAccountStream } from "./account_socket.js";
import { state, update } from "./state.js";

const POLL_MS = { positions: 1000, pending: 2000, agent: 5000, orders: 10000, deals: 10000 };
let timers = [];
let running = false;
let hooks = {};

export function startAccount(token, callbacks) {
  stopAccount();
  running = true;
  hooks = callbacks;
  const features = state.config.features;
  if (features.account_stream) {
    // The stream brings what changes; what was before it comes from a first read.
    refreshOrders();
    if (features.history) refreshDeals();
    startAccountStream(token, {
      onSnapshot: applySnapshot,
      onEvent: applyEvent,
      onRefused: (code) => (code === 4001 ? hooks.onExpired() : code === 4003 ? hooks.onNotOnboarded() : startPolling()),
    });
  } else {
    startPolling();
  }
}

export function stopAccount() {
  running = false;
  stopAccountStream();
  for (const timer of timers) clearTimeout(timer);
  timers = [];
}

function startPolling() {
  update({ streams: { ...state.streams, account: "polling" } });
  poll(refreshPositionsAndAccount, POLL_MS.positions);
  poll(refreshAgent, POLL_MS.agent);
  poll(refreshOrders, POLL_MS.orders);
  if (state.config.features.pending_orders) poll(refreshPendingOrders, POLL_MS.pending);
  if (state.config.features.history) poll(refreshDeals, POLL_MS.deals);
}

// Runs `refresh` now and again `interval` after each run ends: never two at once.
function poll(refresh, interval) {
  const index = timers.length;
  timers.push(0);
  const run = async () => {
    await refresh();
    if (running) timers[index] = setTimeout(run, interval);
  };
  run();
}

// Every read and change goes through here: the answer, or the error's meaning for the
// agent banner (offline, not answering, none provisioned) and the views.
export async function guarded(call) {
  try {
    const result = await call();
    // An answer means the agent is back, unless the account stream is live: then its
    // snapshot and `agent` events say (and a read the agent has no part in, such as the
    // orders list, says nothing of it).
    const streamSays = state.streams.account === "live";
    if (!streamSays && ["offline", "unresponsive"].includes(state.agent.status)) setAgent({ status: "online", detail: "" });
    return result;
  } catch (error) {
    if (error.detail === "agent_offline") setAgent({ status: "offline", detail: error.message });
    else if (error.detail === "agent_timeout") setAgent({ status: "unresponsive", detail: error.message });
    else if (error.detail === "no_agent") setAgent({ status: "none", detail: error.message });
    else if (error.detail === "onboarding_incomplete") hooks.onNotOnboarded?.();
    throw error;
  }
}

async function quietly(call) {
  try {
    return await guarded(call);
  } catch {
    return null; // shown by the banner, or retried by the next poll
  }
}

function setAgent(changes) {
  update({ agent: { ...state.agent, ...changes } });
}

async function refreshPositionsAndAccount() {
  const [positions, account] = await Promise.all([quietly(api.listPositions), quietly(api.getAccount)]);
  if (positions) update({ positions: positions.body });
  if (account) update({ account: account.body });
}

async function refreshPendingOrders() {
  const answer = await quietly(api.listPendingOrders);
  if (answer) update({ pendingOrders: answer.body });
}

async function refreshOrders() {
  const answer = await quietly(api.listOrders);
  if (answer) update({ orders: answer.body });
}

async function refreshDeals() {
  if (!state.config.features.history) return;
  const answer = await quietly(api.listDeals);
  if (answer) update({ deals: answer.body });
}

async function refreshAgent() {
  const answer = await quietly(api.listConnections);
  if (!answer) return;
  const [connection] = [...answer.body].sort((a, b) => a.created_at.localeCompare(b.created_at));
  const agent = connection?.agent;
  if (!agent) setAgent({ status: "none", detail: "No agent is provisioned for your broker connection." });
  else if (agent.status === "offline") setAgent({ status: "offline", detail: lastSeen(agent.last_heartbeat_at) });
  else if (state.agent.status !== "unresponsive") setAgent({ status: "online", detail: "" });
}

function lastSeen(at) {
  return at ? `Last heard from at ${new Date(at).toLocaleTimeString()}.` : "It has never connected.";
}

// After an order or a change: what it changed, without waiting for the next poll.
export function refreshAfterTrade() {
  refreshOrders();
  if (!state.config.features.account_stream) {
    refreshPositionsAndAccount();
    if (state.config.features.pending_orders) refreshPendingOrders();
    if (state.config.features.history) refreshDeals();
  }
}

// While the agent is offline the snapshot holds no account, positions or pending orders
// (null): what the page last knew stays on screen, under the offline banner.
function applySnapshot(snapshot) {
  const changes = {};
  if (snapshot.account) changes.account = snapshot.account;
  if (snapshot.positions) changes.positions = snapshot.positions;
  if (snapshot.pending_orders) changes.pendingOrders = snapshot.pending_orders;
  update(changes);
  applyAgent(snapshot.agent);
  // An online agent that has reported nothing of its terminal (one older than the
  // stream): what the stream cannot say is read over REST, as without a stream.
  if (!snapshot.account && snapshot.agent?.status === "online" && !timers.length) startPolling();
}

function applyAgent(agent) {
  if (!agent) return;
  const status = agent.status === "online" ? "online" : "offline";
  // A snapshot says when the agent was last heard from; an `agent` event does not.
  let detail = "";
  if (status === "offline" && "last_heartbeat_at" in agent) detail = lastSeen(agent.last_heartbeat_at);
  else if (status === "offline" && agent.terminal_connected === false) detail = "Its MT5 terminal is disconnected, or the agent stopped.";
  setAgent({ status, terminalConnected: agent.terminal_connected ?? null, detail });
}

const upsert = (items, item, key) => {
  const rest = items.filter((other) => other[key] !== item[key]);
  return [item, ...rest];
};

function applyEvent({ kind, data }) {
  if (!data) return;
  switch (kind) {
    case "order":
      update({ orders: upsert(state.orders, data, "order_id") });
      break;
    case "position_opened":
    case "position_changed": {
      const exists = state.positions.some((p) => p.position_id === data.position_id);
      const positions = exists
        ? state.positions.map((p) => (p.position_id === data.position_id ? data : p))
        : [...state.positions, data];
      update({ positions });
      break;
    }
    case "position_closed":
      update({ positions: state.positions.filter((p) => p.position_id !== data.position_id) });
      break;
    case "pending_order_placed":
    case "pending_order_changed":
      update({ pendingOrders: upsert(state.pendingOrders, data, "ticket") });
      break;
    case "pending_order_removed":
      update({ pendingOrders: state.pendingOrders.filter((o) => o.ticket !== data.ticket) });
      break;
    case "deal":
      update({ deals: upsert(state.deals, data, "ticket") });
      break;
    case "account":
      update({ account: data });
      break;
    case "agent":
      applyAgent(data);
      break;
    default:
      break; // a kind this page does not know yet
  }
}
