// The state of things, in words: the agent (online, offline, terminal lost, not
// answering) as a banner, role "status" while all is well and "alert" when it is not;
// and the two streams (live, reconnecting, polling).

import { subscribe } from "./state.js";

const AGENT_TEXT = {
  online: "Agent online: orders go to your broker.",
  offline: "Agent offline: orders are disabled until it reconnects.",
  unresponsive: "The agent does not answer: orders are disabled until it does.",
  none: "No agent: provision one for your broker connection to trade.",
  terminal: "Agent online, but its MT5 terminal lost the connection to the broker: orders are disabled.",
  unknown: "Checking the agent…",
};

const STREAM_TEXT = {
  idle: "",
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  refused: "stopped",
  polling: "",
  off: "",
};

export function mountAgentBanner() {
  const banner = document.getElementById("agent-banner");
  const streams = document.getElementById("streams");
  subscribe(["agent"], ({ agent }) => {
    const key = agent.status === "online" && agent.terminalConnected === false ? "terminal" : agent.status;
    const trouble = !["online", "unknown"].includes(key);
    const role = trouble ? "alert" : "status";
    if (banner.getAttribute("role") !== role) banner.setAttribute("role", role);
    banner.dataset.state = trouble ? "trouble" : key;
    const text = [AGENT_TEXT[key] ?? AGENT_TEXT.unknown, trouble ? agent.detail : ""].filter(Boolean).join(" ");
    if (banner.textContent !== text) banner.textContent = text;
  });
  subscribe(["streams"], ({ streams: { prices, account } }) => {
    const parts = [`Prices ${STREAM_TEXT[prices] ?? prices}`];
    if (STREAM_TEXT[account]) parts.push(`account ${STREAM_TEXT[account]}`);
    streams.textContent = parts.join(" · ");
    streams.dataset.state = prices === "live" ? "live" : "trouble";
  });
}
