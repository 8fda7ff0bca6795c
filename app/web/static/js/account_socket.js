// /ws/account: a snapshot, then every event of the account, resumed with `since` after a
// reconnect so that nothing is missed or applied twice. Written against the contract;
// used only where the server has it (state.config.features.account_stream).

import { ReconnectingSocket, socketUrl } from "./socket.js";
import { state, update } from "./state.js";

const PING_INTERVAL_MS = 20000;
let socket = null;
let lastEventId = null;
let pinger = 0;

export function startAccountStream(token, { onSnapshot, onEvent, onRefused }) {
  stopAccountStream();
  socket = new ReconnectingSocket({
    url: () => socketUrl("/ws/account", { token: token(), since: lastEventId }),
    // 4001 bad token, 4003 not onboarded, 4004 not your connection, 1008 too many sockets.
    refusedCodes: [4001, 4003, 4004, 1008],
    onRefused,
    onStatus: (status) => update({ streams: { ...state.streams, account: status } }),
    onMessage: (message) => {
      if (message.type === "snapshot") {
        lastEventId = message.data?.last_event_id ?? lastEventId;
        onSnapshot(message.data ?? {});
      } else if (message.type === "event" && message.event) {
        const id = message.event.id;
        if (typeof id === "number" && typeof lastEventId === "number" && id <= lastEventId) return;
        lastEventId = id;
        onEvent(message.event);
      }
    },
  });
  socket.start();
  pinger = setInterval(() => socket?.send({ type: "ping" }), PING_INTERVAL_MS);
}

export function stopAccountStream() {
  clearInterval(pinger);
  socket?.stop();
  socket = null;
  lastEventId = null;
}
